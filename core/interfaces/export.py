"""The export interfaces: the graphs a model exports, exporters that bundle a run, servers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from lmforge.settings import NoSettings, Settings

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn

    from lmforge.host.registry import Registry


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, dtype ("int64", "float32", "bool") and shape, where a
    symbolic dim is a string ("batch", "sequence", "past", or a sum such as "past+step")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class StateSpec:
    """What a decode graph carries from one step to the next.

    `inputs[i]` is fed with what `outputs[i]` returned. A "kv_cache" output holds only the new
    entries, to be appended along `sequence_axis` (0 cached entries at the start); a "recurrent"
    output replaces its input (zeros at the start).
    """

    kind: Literal["kv_cache", "recurrent"]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batch_axis: int
    sequence_axis: int | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "inputs": list(self.inputs), "outputs": list(self.outputs)}


@dataclass(frozen=True)
class ExportGraph:
    """One graph a model exports: "model" (the full-sequence forward) or "decode" (one step).

    `module` is what is traced; it takes `inputs` positionally and returns `outputs` in order.
    `max_sizes` bounds symbolic dims the module cannot exceed (gpt: sequence <= block_size).
    """

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: StateSpec | None = None
    max_sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's description of the graph (its file is added by the exporter)."""
        described = {"inputs": [spec.to_dict() for spec in self.inputs],
                     "outputs": [spec.to_dict() for spec in self.outputs]}
        if self.state is not None:
            described["state"] = self.state.to_dict()
        return described


class ExporterSettings(Settings):
    """Settings every exporter takes (in a config's `export:` section, or on the command line)."""

    quantize: Literal["int8"] | None = Field(
        None, description="also write a quantized copy of each graph, with its own parity check")


class Exporter(ABC):
    """Turns a trained run into a deployable bundle folder and proves it matches the run.

    A config's `export:` section names one; `lmforge run` then exports at the end, and
    `lmforge export RUN` exports on demand.
    """

    Settings = ExporterSettings

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def export(self, run_dir: Path, out_dir: Path, *, registry: Registry,
               console: Console | None = None, force: bool = False) -> dict[str, Any]:
        """Write the bundle of the run at `run_dir` into `out_dir` and return its parity report.

        `registry` rebuilds the run's components; progress and the report are printed on
        `console`. A bundle already made from the same weights and settings is kept unless
        `force`. Raises ExportError with the figures when the bundle does not match the run;
        whatever was at `out_dir` before is then left as it was.
        """


class Server(ABC):
    """Serves an exported bundle over HTTP (`lmforge serve BUNDLE`)."""

    Settings = NoSettings

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def serve(self, bundle_dir: Path, *, host: str = "127.0.0.1", port: int = 8000,
              api_key: str | None = None, **options: Any) -> None:
        """Load the bundle and answer requests until the process is told to stop."""
