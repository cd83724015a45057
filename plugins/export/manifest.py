"""The bundle's manifest, lmforge.json: what a runtime needs to load and run the bundle."""

from __future__ import annotations

import hashlib
import platform
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

from lmforge.host.manager import GROUP
from lmforge.host.registry import Entry
from lmforge.interfaces.export import ExportGraph
from lmforge.run.pipeline import LoadedRun

FORMAT = 1
MANIFEST = "lmforge.json"
TOKENIZER = "tokenizer.json"
PARITY = "parity.json"
# What a runtime serving the bundle allows unless told otherwise.
MAX_NEW_TOKENS = 1024
MAX_BATCH = 64


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plugin_module(entry: Entry) -> str:
    """The module whose hooks register `entry`: the entry point its plugin was loaded from
    (a built-in's entry point is named after its module), else the component's own module."""
    found = entry_points(group=GROUP).select(name=entry.provider.plugin)
    for point in found:
        if point.dist is None or point.dist.name == entry.provider.distribution:
            return point.value.partition(":")[0]
    return entry.component.__module__


def versions(opset: int) -> dict[str, str | int]:
    found: dict[str, str | int] = {"python": platform.python_version(), "opset": opset}
    for package in ("lmforge", "torch", "onnx", "onnxruntime"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def context_length(loaded: LoadedRun) -> int | None:
    """The longest input the bundle takes: a language model's context, or the length a
    classifier's texts are cut to (the classify task's `max_length`, what `predict` keeps)."""
    if loaded.task.generates_text:
        return getattr(loaded.model, "max_context", None)
    return getattr(loaded.task, "max_length", None)


def manifest(loaded: LoadedRun, graphs: list[ExportGraph], files: dict[str, str],
             labels: list[str] | None, quantized: dict[str, str] | None, opset: int
             ) -> dict[str, Any]:
    """The manifest of a bundle whose graph files are `files` (graph name -> file name),
    without the files' hashes: `seal` adds them once every file is written."""
    config, tokenizer = loaded.config, loaded.tokenizer
    tokenizer_module = plugin_module(config.components["tokenizer"].entry)
    preprocess = config.data.preprocess if config.data is not None else []
    sample = config.sample
    return {
        "format": FORMAT,
        "name": config.name,
        "task": config.components["task"].entry.name,
        "model": config.components["model"].entry.name,
        "vocab_size": tokenizer.vocab_size,
        "labels": labels,
        "tokenizer": {"file": TOKENIZER, "plugin_module": tokenizer_module,
                      "eos_id": tokenizer.eos_id,
                      "pad_id": tokenizer.special_tokens.get("pad")},
        "preprocess": [{"type": step.entry.name,
                        "settings": step.settings.model_dump(mode="json"),
                        "plugin_module": plugin_module(step.entry)}
                       for step in preprocess if step.entry.component.at_inference],
        "graphs": {graph.name: {"file": files[graph.name], **graph.to_dict()}
                   for graph in graphs},
        "quantized": quantized,
        "generation": {"temperature": sample.temperature, "top_k": sample.top_k,
                       "top_p": sample.top_p, "max_new_tokens": sample.max_new_tokens,
                       "repetition_penalty": sample.repetition_penalty},
        "limits": {"context_length": context_length(loaded), "max_new_tokens": MAX_NEW_TOKENS,
                   "max_batch": MAX_BATCH},
        "files": {},
        "versions": versions(opset),
    }


def seal(document: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The manifest with the SHA-256 of every file in `folder` but the manifest itself."""
    files = {path.name: file_sha256(path) for path in sorted(folder.iterdir())
             if path.is_file() and path.name != MANIFEST}
    return {**document, "files": files}
