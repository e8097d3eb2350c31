"""``python -m sparkforge.cli``."""

import sys

from sparkforge.cli.main import main

sys.exit(main())
