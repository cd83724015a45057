"""The onnx exporter on tiny trained runs: bundles, parity, quantization, refusals, the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
import torch
import yaml

from lmforge.errors import ExportError, LmforgeError
from lmforge.plugins.export import onnx_exporter
from lmforge.plugins.models.gpt import GptModule
from lmforge.run.pipeline import run
from tests.cli.test_cli import run as lmforge
from tests.cli.test_cli_classify import write_reviews
from tests.conftest import builtin_registry
from tests.core.test_pipeline import quiet, write_config

CLASSIFIERS = {
    "gpt": {"type": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 32},
    "lstm": {"type": "lstm", "n_embd": 8, "hidden_size": 12, "n_layer": 2,
             "bidirectional": True, "pooling": "last"},
    "textcnn": {"type": "textcnn", "n_embd": 8, "kernel_sizes": [2, 3], "num_filters": 4},
    "transformer": {"type": "transformer", "n_layer": 1, "n_head": 2, "n_embd": 16,
                    "max_length": 32, "pooling": "first"},
}


def with_export(config: Path, **export) -> Path:
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["export"] = {"type": "onnx", **export}
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return config


def lm_config(tmp_path: Path, model: str) -> Path:
    """A language model trained 2 steps."""
    return write_config(tmp_path, model, max_steps=2, warmup_steps=0)


def classify_config(tmp_path: Path, model: str) -> Path:
    """A classifier of two labels trained 2 steps, its texts normalized and cut at 32 tokens."""
    write_reviews(tmp_path / "reviews.tsv", 120, seed=0)
    config = {
        "name": f"tiny-{model}", "runs_dir": str(tmp_path / "runs"), "seed": 1,
        "data": {"source": {"type": "tsv", "paths": [str(tmp_path / "reviews.tsv")],
                            "text_column": "text", "label_column": "score",
                            "label_thresholds": [0], "label_names": ["negative", "positive"]},
                 "preprocess": [{"type": "normalize"}, {"type": "dedup"}],
                 "split": {"val": 0.2, "test": 0.2}},
        "tokenizer": {"type": "word", "lowercase": True, "min_frequency": 1},
        "model": CLASSIFIERS[model],
        "task": {"type": "classify", "max_length": 32},
        "trainer": {"type": "standard", "batch_size": 8, "warmup_steps": 0, "max_steps": 2,
                    "eval_batches": 1},
    }
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def hashes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A gpt run whose config exports it, with int8 copies, at the end of `lmforge run`."""
    tmp_path = tmp_path_factory.mktemp("gpt")
    results = run(str(with_export(lm_config(tmp_path, "gpt"), quantize="int8")),
                  builtin_registry(), console=quiet())
    return tmp_path / "runs" / "tiny-gpt", results


def test_lmforge_run_exports_a_gpt_bundle_that_matches_the_run(gpt_run):
    run_dir, results = gpt_run
    bundle = run_dir / "export"
    report = results["export"]
    assert report["passed"] and json.loads((bundle / "parity.json").read_text()) == report
    manifest = json.loads((bundle / "lmforge.json").read_text())
    assert {k: manifest[k] for k in ("format", "name", "task", "model", "labels")} == {
        "format": 1, "name": "tiny-gpt", "task": "lm", "model": "gpt", "labels": None}
    assert manifest["tokenizer"]["plugin_module"] == "lmforge.plugins.tokenizers"
    assert manifest["limits"]["context_length"] == 16
    assert manifest["generation"]["max_new_tokens"] == 8  # the config's sample section
    assert manifest["graphs"]["decode"]["state"]["kind"] == "kv_cache"
    assert manifest["graphs"]["model"]["file"] == "model.onnx"
    assert manifest["versions"]["opset"] == 18 and manifest["versions"]["onnxruntime"]
    on_disk = hashes(bundle)
    assert manifest["files"] == {name: digest for name, digest in on_disk.items()
                                 if name not in ("lmforge.json", "COMPLETE")}
    inputs = onnx.load(str(bundle / "decode.onnx")).graph.input
    assert [d.dim_param or d.dim_value for d in inputs[2].type.tensor_type.shape.dim] == [
        "batch", "past+step"]

    for graph in report["graphs"].values():
        sizes = [case["sizes"] for case in graph["cases"]]
        assert len(sizes) >= 3 and graph["traced_at"] not in sizes
        assert all(case["passed"] for case in graph["cases"])
    model_sizes = [case["sizes"] for case in report["graphs"]["model"]["cases"]]
    assert {"batch": 1, "sequence": 1} in model_sizes
    assert any(s["sequence"] == 16 and s["batch"] > 1 for s in model_sizes)
    greedy = report["greedy"]
    assert greedy["identical"] and len(greedy["torch"]) == 32


def test_quantize_int8_adds_graphs_with_their_own_figures(gpt_run):
    run_dir, results = gpt_run
    quantized = results["export"]["quantized"]
    manifest = json.loads((run_dir / "export" / "lmforge.json").read_text())
    assert manifest["quantized"] == {"model": "model.int8.onnx", "decode": "decode.int8.onnx"}
    assert {"model.int8.onnx", "decode.int8.onnx"} <= set(manifest["files"])
    assert quantized["passed"] and quantized["tolerance"] == {"share_of_max": 0.1}
    for name in ("model", "decode"):
        assert quantized["graphs"][name]["file"] == f"{name}.int8.onnx"
        speed = quantized["speed"][name]
        assert 0 < speed["int8_bytes"] < speed["fp32_bytes"]
        assert speed["int8_ms"] > 0 and speed["fp32_ms"] > 0
    assert len(quantized["greedy"]["onnxruntime"]) == 32


def test_an_up_to_date_bundle_is_kept(gpt_run, monkeypatch):
    run_dir, results = gpt_run

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced again")

    monkeypatch.setattr(onnx_exporter, "export_graph", no_tracing)
    exporter = builtin_registry().get("exporter", "onnx").create({"quantize": "int8"})
    before = hashes(run_dir / "export")
    report = exporter.export(run_dir, run_dir / "export", registry=builtin_registry())
    assert report == results["export"] and hashes(run_dir / "export") == before


def test_an_export_that_does_not_match_fails_with_figures_and_keeps_the_old_bundle(
        gpt_run, monkeypatch):
    run_dir, _ = gpt_run
    bundle = run_dir / "export"
    before = hashes(bundle)
    forward = GptModule.forward

    def off_when_exported(self, idx):
        logits = forward(self, idx)
        return logits + 1e-2 if torch.compiler.is_exporting() else logits

    monkeypatch.setattr(GptModule, "forward", off_when_exported)
    exporter = builtin_registry().get("exporter", "onnx").create({"quantize": "int8"})
    with pytest.raises(ExportError, match=r"model at batch 1, sequence 1: logits max abs diff "
                                          r"1\.000e-02") as failure:
        exporter.export(run_dir, bundle, registry=builtin_registry(), force=True)
    assert "export.parity-failed.json" in str(failure.value)
    assert hashes(bundle) == before
    failed = json.loads((run_dir / "export.parity-failed.json").read_text())
    assert not failed["passed"] and not failed["graphs"]["model"]["passed"]
    assert failed["graphs"]["decode"]["passed"]  # the decode step does not call forward
    assert not list(run_dir.glob(".export.*"))  # no half-written bundle left behind


def test_lstm_language_model_exports_its_recurrent_decode_step(tmp_path, registry):
    run(str(lm_config(tmp_path, "lstm")), registry, console=quiet())
    run_dir = tmp_path / "runs" / "tiny-lstm"
    exporter = registry.get("exporter", "onnx").create()
    report = exporter.export(run_dir, tmp_path / "bundle", registry=registry)
    assert report["passed"] and report["greedy"]["identical"]
    assert "quantized" not in report
    longest = max(case["sizes"]["sequence"] for case in report["graphs"]["model"]["cases"])
    assert longest == 512  # no context limit: a long sequence stands for it
    manifest = json.loads((tmp_path / "bundle" / "lmforge.json").read_text())
    assert manifest["graphs"]["decode"]["state"] == {
        "kind": "recurrent", "inputs": ["h", "c"], "outputs": ["h_out", "c_out"],
        "batch_axis": 1, "sequence_axis": None}
    assert manifest["limits"]["context_length"] is None and manifest["quantized"] is None


@pytest.mark.parametrize("model", sorted(CLASSIFIERS))
def test_every_classifier_exports_with_parity(tmp_path, registry, model):
    results = run(str(with_export(classify_config(tmp_path, model))), registry, console=quiet())
    report = results["export"]
    assert report["passed"] and set(report["graphs"]) == {"model"} and "greedy" not in report
    manifest = json.loads((tmp_path / "runs" / f"tiny-{model}" / "export" /
                           "lmforge.json").read_text())
    assert manifest["task"] == "classify" and manifest["labels"] == ["negative", "positive"]
    assert manifest["limits"]["context_length"] == 32  # what predict cuts texts to
    # the text-rewriting steps only, as predict applies them
    assert manifest["preprocess"] == [{"type": "normalize", "plugin_module":
                                       "lmforge.plugins.data.preprocess",
                                       "settings": manifest["preprocess"][0]["settings"]}]
    assert [t["name"] for t in manifest["graphs"]["model"]["inputs"]] == ["input_ids",
                                                                         "pad_mask"]


def test_export_replaces_nothing_but_an_earlier_bundle(tmp_path, registry):
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "notes").mkdir(parents=True)
    (run_dir / "notes" / "keep.txt").write_text("mine")
    exporter = registry.get("exporter", "onnx").create()
    with pytest.raises(LmforgeError, match="is not an export bundle"):
        exporter.export(run_dir, run_dir / "notes", registry=registry)
    with pytest.raises(LmforgeError, match="would replace the run folder"):
        exporter.export(run_dir, tmp_path / "runs", registry=registry)
    assert (run_dir / "notes" / "keep.txt").read_text() == "mine"


def test_the_export_command(gpt_run, tmp_path):
    run_dir, results = gpt_run
    printed = lmforge("export", str(run_dir), "--quantize", "int8", "--json", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == results["export"]
    assert "export: cached" in printed.stderr
    refused = lmforge("export", str(tmp_path), cwd=tmp_path)
    assert refused.returncode == 2 and "not a run folder" in refused.stderr
