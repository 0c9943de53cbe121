"""The synthetic shapes dataset's code lives in synthetic.shapes (synthetic/shapes.py); this
module keeps the documented command working:

    python -m captioning.shapes --out DIR [--seed 0] [--train 1000] [--val 100] [--test 100] [--size 64]
"""

import sys

from synthetic.shapes import main

if __name__ == "__main__":
    sys.exit(main())
