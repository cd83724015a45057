"""Loading an exported bundle: the manifest checked, every path kept inside the bundle, every
file's SHA-256 checked, onnxruntime sessions, and the tokenizer and text preprocessors from the
plugin modules the manifest names (and those only)."""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy
from pydantic import ValidationError

from lmforge.errors import RegistryError
from lmforge.host import hookspecs
from lmforge.host.manager import BUILTIN_DISTRIBUTION, GROUP
from lmforge.host.registry import Provider, Registry
from lmforge.interfaces.data import Preprocessor, Record
from lmforge.interfaces.tokenizer import Tokenizer, load_tokenizer
from lmforge.plugins.runtime.manifest import MANIFEST, BundleError, Manifest, read_manifest
from lmforge.run.inputs import file_records, rewrite_records, texts_as_records

# the registration hooks a bundle's plugin modules are asked for: only what running it needs
BUNDLE_KINDS = {"tokenizer": "register_tokenizers", "preprocessor": "register_preprocessors",
                "data_source": "register_data_sources"}


@dataclass
class Bundle:
    """A loaded bundle. `session(name)` gives the onnxruntime session of a graph ("model",
    "decode"), the int8 one when loaded with `quantized`; sessions are made on first use."""

    path: Path
    manifest: Manifest
    tokenizer: Tokenizer
    preprocessors: list[Preprocessor]
    registry: Registry = field(repr=False)
    quantized: bool = False
    threads: int | None = None
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def graph_file(self, name: str) -> str:
        if name not in self.manifest.graphs:
            raise BundleError(f"{self.path / MANIFEST}: graphs: no {name!r} graph (the bundle "
                              f"has {', '.join(sorted(self.manifest.graphs))})")
        if self.quantized:
            return (self.manifest.quantized or {}).get(name) or _no_quantized(self, name)
        return self.manifest.graphs[name].file

    def session(self, name: str):
        with self._lock:
            if name not in self._sessions:
                self._sessions[name] = _session(self, self.graph_file(name))
            return self._sessions[name]

    def preprocess(self, texts: Iterable[str]) -> list[str]:
        """Texts through the run's text-rewriting preprocessors, in order; a text a step would
        drop is kept as it was (every input needs an answer), as `lmforge predict` does."""
        records = rewrite_records(self.preprocessors, texts_as_records(texts))
        return [record["text"] for record in records]

    def file_records(self, path: Path) -> list[Record]:
        """The records of a data file, read as the run would read it (its data source, with
        its settings where they apply); not preprocessed."""
        source = self.manifest.source
        if source is None:
            raise BundleError(f"{self.path / MANIFEST}: source: the bundle does not record the "
                              f"run's data source to read {path} with; give the texts instead")
        entry = self.registry.get("data_source", source.type)
        try:
            return list(file_records(path, entry, source.settings, self.registry))
        except ValidationError as exc:
            raise BundleError(f"{self.path / MANIFEST}: source.settings: {exc}") from None


def load_bundle(path: str | Path, *, quantized: bool = False, threads: int | None = None
                ) -> Bundle:
    """Load the bundle in folder `path`, refusing it with a BundleError naming the file and
    field when the manifest is malformed, a path leaves the folder (`..`, absolute, a symlink
    out, an ONNX external-data location), a file is missing or its SHA-256 differs from the
    manifest's. The sessions the task runs ("decode" for a language model, "model" for a
    classifier) are made here; `threads` sets onnxruntime's intra-op threads (default: the
    cores this process may use)."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    manifest = read_manifest(folder)
    for name, digest in manifest.files.items():
        found = _sha256(inside(folder, name, f"files.{name}"))
        if found != digest:
            raise BundleError(f"{folder / name}: SHA-256 {found} differs from the manifest's "
                              f"{digest}: the file was changed after export")
    registry = _plugin_registry(folder, manifest)
    tokenizer = _tokenizer(folder, manifest, registry)
    preprocessors = []
    for i, step in enumerate(manifest.preprocess):
        entry = _lookup(registry, "preprocessor", step.type, folder, f"preprocess[{i}].type")
        try:
            preprocessors.append(entry.create(step.settings))
        except Exception as exc:
            raise BundleError(f"{folder / MANIFEST}: preprocess[{i}].settings: {exc}") from None
    if manifest.source is not None:
        _lookup(registry, "data_source", manifest.source.type, folder, "source.type")
    bundle = Bundle(folder, manifest, tokenizer, preprocessors, registry, quantized, threads)
    bundle.session({"lm": "decode", "classify": "model"}[manifest.task])
    return bundle


def inside(folder: Path, name: Any, where: str) -> Path:
    """The file `name` of the bundle, refused unless it is a plain file name whose file, once
    symlinks are followed, is a regular file inside the bundle folder."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\0" in name or Path(name).is_absolute()):
        raise BundleError(f"{folder / MANIFEST}: {where}: {name!r} is not a plain file name "
                          f"inside the bundle")
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise BundleError(f"{folder / MANIFEST}: {where}: {name!r} leads out of the bundle "
                          f"(to {target})")
    if not target.is_file():
        raise BundleError(f"{folder / name}: missing ({where} names it)")
    return target


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _no_quantized(bundle: Bundle, name: str):
    raise BundleError(f"{bundle.path / MANIFEST}: quantized: no int8 {name!r} graph; export with "
                      f"--quantize int8")


def _plugin_registry(folder: Path, manifest: Manifest) -> Registry:
    """A registry holding what the manifest's plugin modules register as tokenizers,
    preprocessors and data sources; each module must be an installed lmforge plugin."""
    named = {manifest.tokenizer.plugin_module: "tokenizer.plugin_module"}
    for i, step in enumerate(manifest.preprocess):
        named.setdefault(step.plugin_module, f"preprocess[{i}].plugin_module")
    if manifest.source is not None:
        named.setdefault(manifest.source.plugin_module, "source.plugin_module")
    installed = {ep.module: ep for ep in entry_points(group=GROUP)}
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    providers = {}
    for module, where in named.items():
        ep = installed.get(module)
        if ep is None:
            raise BundleError(f"{folder / MANIFEST}: {where}: {module!r} is not an installed "
                              f"lmforge plugin; install the plugin the run was trained with")
        manager.register(importlib.import_module(module), name=ep.name)
        dist = ep.dist
        providers[ep.name] = Provider(ep.name, dist.name if dist else "unknown",
                                      dist.version if dist else "unknown",
                                      dist is not None and dist.name == BUILTIN_DISTRIBUTION)
    registry = Registry()
    for kind, hook in BUNDLE_KINDS.items():
        for impl in getattr(manager.hook, hook).get_hookimpls():
            def register(name, component, *, settings=None, _kind=kind,
                         _provider=providers[impl.plugin_name]):
                registry.add(_kind, name, component, settings, _provider)

            impl.function(register=register)
    return registry


def _lookup(registry: Registry, kind: str, name: str, folder: Path, where: str):
    try:
        return registry.get(kind, name)
    except RegistryError as exc:
        raise BundleError(f"{folder / MANIFEST}: {where}: {exc}") from None


def _tokenizer(folder: Path, manifest: Manifest, registry: Registry) -> Tokenizer:
    entry = manifest.tokenizer
    path = inside(folder, entry.file, "tokenizer.file")
    try:
        tokenizer = load_tokenizer(path, registry)
    except RegistryError as exc:
        raise BundleError(f"{path}: {exc} (among what {entry.plugin_module} registers)") from None
    expected = {"eos_id": entry.eos_id, "vocab_size": manifest.vocab_size}
    if entry.pad_id is not None:
        expected["pad_id"] = entry.pad_id
    found = {key: getattr(tokenizer, key) for key in expected}
    if found != expected:
        raise BundleError(f"{folder / MANIFEST}: tokenizer: the manifest says {expected}, the "
                          f"tokenizer file has {found}")
    return tokenizer


def _session(bundle: Bundle, name: str):
    """An onnxruntime session of graph file `name`, made from the bytes whose hash is checked
    here (so the graph run is the graph checked), its external data read from the bundle."""
    import onnxruntime as ort

    path = inside(bundle.path, name, "graph file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != bundle.manifest.files.get(name):
        raise BundleError(f"{path}: SHA-256 {digest} differs from the manifest's "
                          f"{bundle.manifest.files.get(name)}: the file was changed after export")
    for tensor, location in _external_locations(data):
        checked = inside(bundle.path, location, f"{name}: external data of tensor {tensor!r}")
        if checked.name not in bundle.manifest.files:
            raise BundleError(f"{path}: tensor {tensor!r} keeps its data in {location!r}, which "
                              f"the manifest does not hash")
    options = ort.SessionOptions()
    options.intra_op_num_threads = bundle.threads or available_cores()
    options.inter_op_num_threads = 1
    # Idle pool threads would spin between calls, taking the cores from the Python around them
    # (sampling, the tokenizer, the server): measured to slow torch running beside it ~6x here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(bundle.path.resolve()))
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{path}: onnxruntime cannot load the graph: {exc}") from None


def _external_locations(data: bytes) -> Iterator[tuple[str, str]]:
    """(tensor name, location) of every tensor of an ONNX model that keeps its data in another
    file: initializers and constants of the graph, its subgraphs and its functions."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(data)
    for tensor in _tensors(model.graph.initializer, model.graph.sparse_initializer,
                           model.graph.node, *(f.node for f in model.functions)):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            yield tensor.name, entries.get("location", "")


def _tensors(*groups) -> Iterator[Any]:
    import onnx

    for group in groups:
        for item in group:
            if isinstance(item, onnx.TensorProto):
                yield item
            elif isinstance(item, onnx.SparseTensorProto):
                yield from (item.values, item.indices)
            elif isinstance(item, onnx.NodeProto):
                for attribute in item.attribute:
                    yield from _tensors([attribute.t], attribute.tensors,
                                        [attribute.sparse_tensor], attribute.sparse_tensors)
                    for graph in (attribute.g, *attribute.graphs):
                        yield from _tensors(graph.initializer, graph.sparse_initializer,
                                            graph.node)


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
