"""lmforge: train, evaluate, export and serve your own language models.

What a plugin author imports lives here: `hookimpl`, the settings base classes, the errors and
the component interfaces. The interfaces load on first use, so `import lmforge` stays cheap.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

import pluggy

from lmforge.errors import ConfigError, DataError, ExportError, LmforgeError
from lmforge.settings import NoSettings, Settings

try:
    __version__ = version("lmforge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

hookimpl = pluggy.HookimplMarker("lmforge")

# name -> the module that defines it
_INTERFACES = {
    "DataSource": "lmforge.interfaces.data",
    "Preprocessor": "lmforge.interfaces.data",
    "Record": "lmforge.interfaces.data",
    "SourceSettings": "lmforge.interfaces.data",
    "Tokenizer": "lmforge.interfaces.tokenizer",
    "Model": "lmforge.interfaces.model",
    "ModelSpec": "lmforge.interfaces.model",
    "LanguageModel": "lmforge.interfaces.model",
    "Metric": "lmforge.interfaces.metric",
    "SequenceClassifier": "lmforge.interfaces.model",
    "Task": "lmforge.interfaces.task",
    "TaskData": "lmforge.interfaces.task",
    "TaskSettings": "lmforge.interfaces.task",
    "Trainer": "lmforge.interfaces.trainer",
    "TrainContext": "lmforge.interfaces.trainer",
    "Callback": "lmforge.interfaces.callback",
    "Exporter": "lmforge.interfaces.export",
    "ExporterSettings": "lmforge.interfaces.export",
    "ExportGraph": "lmforge.interfaces.export",
    "Server": "lmforge.interfaces.export",
    "StateSpec": "lmforge.interfaces.export",
    "TensorSpec": "lmforge.interfaces.export",
}


def __getattr__(name: str):
    module = _INTERFACES.get(name)
    if module is None:
        raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["ConfigError", "DataError", "ExportError", "LmforgeError", "NoSettings", "Settings",
           "__version__", "hookimpl", *_INTERFACES]
