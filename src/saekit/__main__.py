"""`python -m saekit` runs the command line (torchrun uses this form)."""

import sys

from saekit.cli import main

sys.exit(main())
