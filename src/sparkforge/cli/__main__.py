"""``python -m sparkforge.cli``."""

import sys

from sparkforge.cli.app import main

sys.exit(main())
