"""Runs trained, exported by the onnx exporter, then run by the runtime: the bundle gives what
the run gives (greedy tokens, labels), batched or alone, and in a process without torch."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from lmforge.plugins.runtime.bundle import load_bundle  # noqa: E402
from lmforge.plugins.runtime.classify import Classifier  # noqa: E402
from lmforge.plugins.runtime.commands import predict_bundle  # noqa: E402
from lmforge.plugins.runtime.generate import Engine, Sampling  # noqa: E402
from lmforge.plugins.tasks.commands import predict_texts  # noqa: E402
from lmforge.plugins.tasks.generate import generate, generate_text  # noqa: E402
from lmforge.run.pipeline import load_run, run  # noqa: E402

from ...conftest import builtin_registry  # noqa: E402
from ...core.test_pipeline import quiet, write_config  # noqa: E402
from ..export.test_onnx_export import classify_config  # noqa: E402
from .test_commands import lmforge  # noqa: E402

PROMPTS = ["line 1", "l", "the quick fox number 3 jumps over the lazy one", "fox"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (run folder, bundle folder): a gpt (with int8 graphs) and an lstm language
    model, and a textcnn classifier, each trained 2 steps and exported."""
    tmp = tmp_path_factory.mktemp("e2e")
    configs = {"gpt": write_config(tmp, "gpt", max_steps=2, warmup_steps=0),
               "lstm": write_config(tmp, "lstm", max_steps=2, warmup_steps=0),
               "textcnn": classify_config(tmp, "textcnn")}
    folders = {}
    for name, config in configs.items():
        run(str(config), builtin_registry(), console=quiet())
        run_dir = next(p for p in (tmp / "runs").iterdir() if p.name.endswith(name))
        exporter = builtin_registry().get("exporter", "onnx").create(
            {"quantize": "int8" if name == "gpt" else None})
        exporter.export(run_dir, tmp / f"bundle-{name}", registry=builtin_registry())
        folders[name] = (run_dir, tmp / f"bundle-{name}")
    return folders


@pytest.mark.parametrize("model", ["gpt", "lstm"])
def test_onnxruntime_greedy_equals_torch_greedy_batched(exported, model):
    run_dir, folder = exported[model]
    bundle = load_bundle(folder)
    loaded = load_run(run_dir, builtin_registry(), with_data=False)
    prompts = [bundle.tokenizer.encode(p) for p in PROMPTS]
    engine = Engine.for_bundle(bundle, max_batch=3)
    # 40 new tokens run the gpt (context 16) well past its context
    requests = [engine.submit(p, Sampling(max_new_tokens=40, temperature=0)) for p in prompts]
    while engine.step():
        pass
    for request, prompt in zip(requests, prompts, strict=True):
        expected = list(generate(loaded.model, prompt, max_new_tokens=40, temperature=0,
                                 stop_ids={bundle.tokenizer.eos_id}))
        assert request.generated == expected


def test_the_int8_graphs_load_and_generate(exported):
    _, folder = exported["gpt"]
    bundle = load_bundle(folder, quantized=True)
    assert bundle.graph_file("decode") == "decode.int8.onnx"
    engine = Engine.for_bundle(bundle)
    request = engine.submit(bundle.tokenizer.encode("line"), Sampling(max_new_tokens=12, seed=1))
    tokens = list(request.tokens())
    assert all(0 <= t < bundle.manifest.vocab_size for t in tokens) and tokens


def test_a_bundle_classifies_as_the_run_does(exported):
    run_dir, folder = exported["textcnn"]
    texts = ("A warm, funny film.", "Dull  and\tboring.", "", "plot cast story " * 20)
    expected = predict_texts(str(run_dir), builtin_registry(), texts)
    found = predict_bundle(str(folder), texts)
    assert [f["text"] for f in found] == [e["text"] for e in expected]
    assert [f["label"] for f in found] == [e["label"] for e in expected]
    for f, e in zip(found, expected, strict=True):
        np.testing.assert_allclose(list(f["probabilities"].values()),
                                   list(e["probabilities"].values()), atol=1e-5)


def test_a_bundle_round_trip_in_a_fresh_process_without_torch(exported):
    run_dir, folder = exported["gpt"]
    loaded = load_run(run_dir, builtin_registry(), with_data=False)
    done = lmforge("generate", str(folder), "--prompt", "line 1", "--temperature", "0",
                   "--max-new-tokens", "30")
    assert done.returncode == 0, done.stderr
    expected = "".join(generate_text(loaded.model, loaded.tokenizer, "line 1",
                                     max_new_tokens=30, temperature=0))
    assert done.stdout == "line 1" + expected + "\n"
    assert "torch imported: False" in done.stderr

    _, classifier = exported["textcnn"]
    done = lmforge("predict", str(classifier), "--text", "A warm film.", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] in ("negative", "positive")
    assert "torch imported: False" in done.stderr


def test_a_classifier_bundle_cuts_texts_at_the_task_s_max_length(exported):
    _, folder = exported["textcnn"]
    bundle = load_bundle(folder)
    assert bundle.manifest.limits.context_length == 32  # the task's max_length
    assert [len(ids) for ids in Classifier(bundle).encode(["plot " * 100, ""])] == [32, 1]


def test_a_bundle_reads_a_data_file_with_the_run_s_source(exported):
    run_dir, folder = exported["textcnn"]
    data_file = run_dir.parent.parent / "reviews.tsv"  # the run's training file, a TSV
    expected = predict_texts(str(run_dir), builtin_registry(), data_file=str(data_file))
    found = predict_bundle(str(folder), data_file=str(data_file))
    assert len(found) == len(expected) == 120
    assert [(f["text"], f["label"], f.get("true")) for f in found] == [
        (e["text"], e["label"], e.get("true")) for e in expected]
