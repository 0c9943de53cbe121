"""The random-model factory's code lives in synthetic.factory (synthetic/factory.py); this
module keeps the documented command working:

    python -m captioning.factory --family idefics3 --size tiny --out models/tiny-smolvlm
"""

import sys

from synthetic.factory import main

if __name__ == "__main__":
    sys.exit(main())
