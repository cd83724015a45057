"""Entry point for `python -m lmforge`."""

from lmforge.cli import main

main()
