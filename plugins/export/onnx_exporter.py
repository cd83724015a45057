"""The `onnx` exporter at work: a run's graphs, tokenizer and manifest in a bundle proven to match
the run, written whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge import __version__
from lmforge.atomic import atomic_dir, atomic_write_text
from lmforge.errors import ExportError, LmforgeError
from lmforge.host.registry import Registry
from lmforge.interfaces.export import ExporterSettings, ExportGraph
from lmforge.interfaces.model import LanguageModel
from lmforge.plugins.export import parity
from lmforge.plugins.export.manifest import (
    MANIFEST,
    PARITY,
    TOKENIZER,
    context_length,
    file_sha256,
    manifest,
    seal,
)
from lmforge.plugins.export.report import failures, print_report
from lmforge.plugins.export.trace import OPSET, export_graph
from lmforge.run.checkpoint import MODEL_FILE
from lmforge.run.folder import CONFIG_FILE, SPEC_FILE, TOKENIZER_FILE
from lmforge.run.pipeline import LoadedRun, load_run


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Models built in the block resolve every op to PyTorch's own (`LMFORGE_KERNELS`): an
    exported graph holds standard ONNX operators, never lmforge's custom ones."""
    before = os.environ.get("LMFORGE_KERNELS")
    os.environ["LMFORGE_KERNELS"] = "reference"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LMFORGE_KERNELS", None)
        else:
            os.environ["LMFORGE_KERNELS"] = before


def check_destination(run_dir: Path, out_dir: Path) -> None:
    """Refuse a bundle folder that would replace anything but an earlier bundle."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run or out in run.parents:
        raise LmforgeError(f"{out_dir}: the bundle folder would replace the run folder {run_dir} "
                           f"it is exported from; give a folder of its own (default: "
                           f"{run_dir / 'export'})")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise LmforgeError(f"{out_dir} exists and is not an export bundle (it has no {MANIFEST}): "
                           f"exporting replaces the folder whole, so give a new or empty folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise LmforgeError(f"{out_dir} is a file; the bundle is a folder")


def export_graphs(loaded: LoadedRun) -> list[ExportGraph]:
    """The model's graphs, checked to hold what the run's task needs."""
    graphs = loaded.model.export_graphs()
    names = [graph.name for graph in graphs]
    needed = ["model", "decode"] if loaded.task.generates_text else ["model"]
    missing = [name for name in needed if name not in names]
    if missing or len(set(names)) != len(names):
        raise ExportError(f"{type(loaded.model).__name__}.export_graphs() gave the graphs "
                          f"{names}; the task needs {needed}, each once")
    if loaded.task.generates_text and not isinstance(loaded.model, LanguageModel):
        raise ExportError(f"{type(loaded.model).__name__} generates text but is not an "
                          f"lmforge LanguageModel")
    return graphs


def quantize_int8(source: Path) -> Path:
    """An int8 copy of an ONNX file beside it (onnxruntime's dynamic quantization: int8
    weights, activations quantized on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = source.with_name(f"{source.stem}.int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for convolutional image models
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return target


def export_bundle(settings: ExporterSettings, run_dir: Path, out_dir: Path, *,
                  registry: Registry, console: Console | None = None, force: bool = False
                  ) -> dict[str, Any]:
    """`OnnxExporter.export`: the bundle of the run at `run_dir` in `out_dir`, its report."""
    console = console or Console(quiet=True)
    check_destination(run_dir, out_dir)
    with reference_kernels():
        loaded = load_run(run_dir, registry, with_data=False)
    source = source_of(loaded, settings)
    cached = None if force else up_to_date(out_dir, source)
    if cached is not None:
        console.print(f"export: cached ({out_dir} matches the run; --force exports again)")
        return cached
    graphs = export_graphs(loaded)
    failed = out_dir.with_name(f"{out_dir.name}.parity-failed.json")
    with atomic_dir(out_dir) as folder:
        files = {}
        for graph in graphs:
            console.print(f"export: tracing {graph.name} ...")
            export_graph(graph, folder / f"{graph.name}.onnx", loaded.tokenizer.vocab_size)
            files[graph.name] = f"{graph.name}.onnx"
        quantized = None
        if settings.quantize == "int8":
            quantized = {name: quantize_int8(folder / file).name for name, file in files.items()}
        shutil.copyfile(run_dir / TOKENIZER_FILE, folder / TOKENIZER)
        console.print("export: checking parity with onnxruntime ...")
        report = {"source": source, **check(loaded, graphs, folder, files, quantized)}
        print_report(console, report)
        text = json.dumps(report, indent=2) + "\n"
        if not report["passed"]:
            atomic_write_text(failed, text)
            problems = "\n  ".join(failures(report))
            raise ExportError(f"the export does not match the run, so {out_dir} was not "
                              f"written:\n  {problems}\nthe whole report: {failed}")
        (folder / PARITY).write_text(text, encoding="utf-8")
        document = manifest(loaded, graphs, files, spec_labels(run_dir), quantized, OPSET)
        (folder / MANIFEST).write_text(json.dumps(seal(document, folder), indent=2) + "\n",
                                       encoding="utf-8")
    failed.unlink(missing_ok=True)
    console.print(f"export: {out_dir} written (parity passed; report in {out_dir / PARITY})")
    return report


def source_of(loaded: LoadedRun, settings: ExporterSettings) -> dict[str, str]:
    """What a bundle is made from: the checkpoint, and a key over its weights, the tokenizer,
    the run's config, the exporter's settings and lmforge's version."""
    run_dir = loaded.config.run_dir
    parts = [file_sha256(loaded.checkpoint / MODEL_FILE), file_sha256(run_dir / TOKENIZER_FILE),
             file_sha256(run_dir / CONFIG_FILE), settings.model_dump(mode="json"), __version__]
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return {"checkpoint": loaded.checkpoint.name, "key": key}


def spec_labels(run_dir: Path) -> list[str] | None:
    labels = json.loads((run_dir / SPEC_FILE).read_text(encoding="utf-8")).get("labels")
    return list(labels) if labels else None


def up_to_date(out_dir: Path, source: dict[str, str]) -> dict[str, Any] | None:
    """The report of the bundle at `out_dir` when it was made from `source` and every file
    still has the hash its manifest records; else None."""
    try:
        report = json.loads((out_dir / PARITY).read_text(encoding="utf-8"))
        recorded = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
        if report.get("source") != source or not report.get("passed"):
            return None
        if any(file_sha256(out_dir / name) != digest for name, digest in recorded.items()):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return report


def check(loaded: LoadedRun, graphs: list[ExportGraph], folder: Path, files: dict[str, str],
          quantized: dict[str, str] | None) -> dict[str, Any]:
    """Every parity figure of the bundle in `folder`, and whether it passes."""
    vocab, context = loaded.tokenizer.vocab_size, context_length(loaded)
    report: dict[str, Any] = {"tolerance": parity.TOLERANCE, "opset": OPSET, "graphs": {
        graph.name: parity.graph_parity(graph, folder / files[graph.name], vocab, context,
                                        parity.TOLERANCE) for graph in graphs}}
    passed = [graph["passed"] for graph in report["graphs"].values()]
    decode = next((graph for graph in graphs if graph.name == "decode"), None)
    if loaded.task.generates_text:
        prompt = loaded.tokenizer.encode(loaded.config.sample.prompts[0] if
                                         loaded.config.sample.prompts else "")
        prompt = prompt or [loaded.tokenizer.eos_id]
        report["greedy"] = parity.greedy_parity(loaded.model, decode, folder / files["decode"],
                                                prompt)
        passed.append(report["greedy"]["identical"])
    if quantized:
        report["quantized"] = check_quantized(loaded, graphs, folder, files, quantized,
                                              report.get("greedy"))
        passed.append(report["quantized"]["passed"])
    report["passed"] = all(passed)
    return report


def check_quantized(loaded: LoadedRun, graphs: list[ExportGraph], folder: Path,
                    files: dict[str, str], quantized: dict[str, str],
                    greedy: dict[str, Any] | None) -> dict[str, Any]:
    """The int8 graphs against torch at the looser INT8_TOLERANCE; their sizes and the time of
    one call of each against its fp32 graph; greedy decoding with them (a figure: int8 may
    rightly pick another token where two are close)."""
    vocab, context = loaded.tokenizer.vocab_size, context_length(loaded)
    tolerance = parity.INT8_TOLERANCE
    section: dict[str, Any] = {"tolerance": tolerance, "graphs": {}, "speed": {}}
    for graph in graphs:
        fp32, int8 = folder / files[graph.name], folder / quantized[graph.name]
        section["graphs"][graph.name] = parity.graph_parity(graph, int8, vocab, context,
                                                            tolerance)
        sizes = parity.timing_sizes(graph, context)
        section["speed"][graph.name] = {
            "sizes": sizes, "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
            "fp32_ms": parity.milliseconds_per_call(fp32, graph, sizes, vocab),
            "int8_ms": parity.milliseconds_per_call(int8, graph, sizes, vocab)}
    if greedy is not None:
        decode = next(graph for graph in graphs if graph.name == "decode")
        section["greedy"] = parity.greedy_parity(loaded.model, decode, folder / quantized["decode"],
                                                 greedy["prompt_ids"], reference=greedy["torch"])
    section["passed"] = all(graph["passed"] for graph in section["graphs"].values())
    return section
