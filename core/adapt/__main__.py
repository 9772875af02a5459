"""`python -m adapt`: the same as the `adapt` command (used where the script is not on PATH, e.g. under torchrun)."""

from adapt.commands.cli import entry

entry()
