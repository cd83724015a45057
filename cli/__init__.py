"""The `lmforge` command line, its rendering and `doctor`."""

from lmforge.cli.main import cli, main, set_option

__all__ = ["cli", "main", "set_option"]
