"""``python -m release ...`` runs the ``release`` command (see release/cli.py)."""

import sys

from release.cli import main

sys.exit(main())
