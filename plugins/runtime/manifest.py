"""The bundle manifest (lmforge.json, format 1): its schema, and reading it with errors that
name the file and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmforge.errors import LmforgeError

MANIFEST = "lmforge.json"
FORMAT = 1
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(LmforgeError):
    """A bundle that cannot be loaded: a bad manifest, an unsafe path, a tampered file."""


class _Part(BaseModel):
    # Writers may add fields a reader of the same format ignores.
    model_config = ConfigDict(extra="ignore", frozen=True)


class TensorSpec(_Part):
    name: str = Field(min_length=1)
    dtype: Literal["int64", "float32", "float16", "bool"]
    shape: list[int | str]  # symbolic dims are strings ("batch", "sequence", "past")


class StateSpec(_Part):
    kind: Literal["kv_cache", "recurrent"]
    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    batch_axis: int = Field(ge=0)
    sequence_axis: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> StateSpec:
        if len(self.inputs) != len(self.outputs):
            raise ValueError(f"state inputs and outputs pair up in order, found "
                             f"{len(self.inputs)} inputs and {len(self.outputs)} outputs")
        if (self.kind == "kv_cache") != (self.sequence_axis is not None):
            raise ValueError("a kv_cache state has a sequence_axis and a recurrent one has "
                             f"none, found kind {self.kind!r} with {self.sequence_axis!r}")
        if self.sequence_axis == self.batch_axis:
            raise ValueError(f"batch_axis and sequence_axis must differ, both are "
                             f"{self.batch_axis}")
        return self


class GraphEntry(_Part):
    file: str
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    state: StateSpec | None = None

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)

    @model_validator(mode="after")
    def _state_names_declared(self) -> GraphEntry:
        if self.state is not None:
            inputs = {spec.name: spec for spec in self.inputs}
            outputs = {spec.name for spec in self.outputs}
            missing = ([n for n in self.state.inputs if n not in inputs]
                       + [n for n in self.state.outputs if n not in outputs])
            if missing:
                raise ValueError(f"state names {missing} are not among the graph's inputs and "
                                 f"outputs")
            for name in self.state.inputs:
                spec = inputs[name]
                axes = [self.state.batch_axis, self.state.sequence_axis]
                if max(a for a in axes if a is not None) >= len(spec.shape):
                    raise ValueError(f"state input {name!r} has {len(spec.shape)} axes, fewer "
                                     f"than the state's axes {axes} need")
        return self


class TokenizerEntry(_Part):
    file: str
    plugin_module: str = Field(min_length=1)
    eos_id: int = Field(ge=0)
    pad_id: int | None = Field(None, ge=0)


class ComponentEntry(_Part):
    """A registered component of the run: its name, settings and the plugin module providing
    it."""

    type: str = Field(min_length=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    plugin_module: str = Field(min_length=1)


class Generation(_Part):
    """Sampling defaults, from the run config's `sample:` section."""

    temperature: float = Field(ge=0)
    top_k: int | None = Field(ge=1)
    top_p: float | None = Field(gt=0, le=1)
    max_new_tokens: int = Field(ge=0)
    repetition_penalty: float = Field(gt=0)


class Limits(_Part):
    context_length: int | None = Field(ge=1)
    max_new_tokens: int = Field(ge=0)
    max_batch: int = Field(ge=1)
    # classifiers: tokens kept per text (the task's max_length); default: the context length
    max_length: int | None = Field(None, ge=1)


class Manifest(_Part):
    format: Literal[1]
    name: str = Field(min_length=1)
    task: Literal["lm", "classify"]
    model: str
    vocab_size: int = Field(ge=1)
    labels: list[str] | None = None
    tokenizer: TokenizerEntry
    preprocess: list[ComponentEntry] = Field(default_factory=list)
    # the run's data source (settings without paths): how `predict --file` reads a file
    source: ComponentEntry | None = None
    graphs: dict[str, GraphEntry]
    quantized: dict[str, str] | None = None
    generation: Generation
    limits: Limits
    files: dict[str, str]
    versions: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> Manifest:
        needed = {"lm": "decode", "classify": "model"}[self.task]
        if needed not in self.graphs:
            raise ValueError(f"a {self.task} bundle needs a {needed!r} graph, found "
                             f"{sorted(self.graphs)}")
        if self.task == "classify" and not (self.labels and len(self.labels) >= 2):
            raise ValueError(f"a classify bundle needs at least two labels, found {self.labels}")
        if self.quantized and set(self.quantized) - set(self.graphs):
            raise ValueError(f"quantized graphs {sorted(set(self.quantized) - set(self.graphs))} "
                             f"have no fp32 graph")
        bad = {name: digest for name, digest in self.files.items() if not SHA256.match(digest)}
        if bad:
            raise ValueError(f"files: expected lowercase hex SHA-256 digests, found {bad}")
        unhashed = [name for name in self.referenced_files() if name not in self.files]
        if unhashed:
            raise ValueError(f"files named by the manifest but missing from `files` (every "
                             f"file is hashed): {unhashed}")
        return self

    def referenced_files(self) -> list[str]:
        """Every file the manifest names, besides the `files` table itself."""
        named = [self.tokenizer.file, *(graph.file for graph in self.graphs.values())]
        return named + list((self.quantized or {}).values())


def is_bundle(path: str | Path) -> bool:
    """Whether `path` is a bundle folder (one holding lmforge.json) rather than a run."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: Path) -> Manifest:
    """The validated manifest of the bundle in `folder`."""
    path = folder / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{folder}: not a bundle (no {MANIFEST}); export a run with "
                          f"`lmforge export RUN`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise BundleError(f"{path}: format: this lmforge reads bundle format {FORMAT}, found "
                          f"{raw.get('format')!r}; export the run again with this version")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{path}: {_field(error['loc'])}: {_explain(error)}"
                    for error in exc.errors()]
        raise BundleError("\n".join(problems)) from None


def _field(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _explain(error: dict) -> str:
    if error["type"] == "missing":
        return "missing required field"
    return f"{error['msg']} (found {error.get('input')!r:.200})"
