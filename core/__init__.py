"""lmforge: train, evaluate, export and serve your own language models."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("lmforge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

hookimpl = pluggy.HookimplMarker("lmforge")

__all__ = ["__version__", "hookimpl"]
