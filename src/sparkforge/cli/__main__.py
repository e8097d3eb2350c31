"""``python -m sparkforge.cli``."""

import sys

from sparkforge.cli.app import entry

sys.exit(entry())
