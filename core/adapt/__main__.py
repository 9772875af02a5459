"""`python -m adapt`: the same as the `adapt` command (used where the script is not on PATH, e.g. under torchrun)."""

import sys

from adapt.commands.cli import main

sys.exit(main())
