"""`python -m lmforge.plugins.runtime generate|predict BUNDLE`: the bundle commands without the
plugin host, so nothing imports torch."""

import sys

import click

from lmforge.errors import LmforgeError
from lmforge.plugins.tasks.commands import generate_command, predict_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def runtime() -> None:
    """Run exported bundles with onnxruntime."""


runtime.add_command(generate_command)
runtime.add_command(predict_command)


def main(argv: list[str] | None = None) -> None:
    try:
        runtime.main(args=argv, prog_name="python -m lmforge.plugins.runtime",
                     standalone_mode=False, obj=None)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
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
