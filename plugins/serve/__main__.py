"""`python -m lmforge.plugins.serve BUNDLE`: `lmforge serve` without the plugin host, so
nothing imports torch."""

import sys

import click

from lmforge.errors import LmforgeError
from lmforge.plugins.serve import serve_command


def main(argv: list[str] | None = None) -> None:
    try:
        serve_command.main(args=argv, prog_name="python -m lmforge.plugins.serve",
                           standalone_mode=False, obj=None)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except LmforgeError as exc:
        print(f"lmforge: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
