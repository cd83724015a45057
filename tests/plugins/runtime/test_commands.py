"""`lmforge generate BUNDLE` / `lmforge predict BUNDLE`: the bundle runs without the plugin host
and without importing torch."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

from lmforge.plugins.runtime.bundle import load_bundle  # noqa: E402
from lmforge.plugins.runtime.classify import Classifier  # noqa: E402

from ...cli.test_cli import run  # noqa: E402
from .tiny_bundles import classifier_bundle, kv_greedy, lm_bundle, rehash  # noqa: E402

# runs the `lmforge` command, then reports on stderr whether torch was imported
LMFORGE = """
import atexit, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.stderr))
from lmforge.cli import main
main(sys.argv[1:])
"""


def lmforge(*args, input=None):
    return subprocess.run([sys.executable, "-c", LMFORGE, *args], capture_output=True,
                          text=True, timeout=120, input=input)


@pytest.fixture
def lm(tmp_path, registry):
    return lm_bundle(tmp_path / "lm", registry)


@pytest.fixture
def classifier(tmp_path, registry):
    folder = classifier_bundle(tmp_path / "c", registry, preprocess=[("normalize",
                                                                       {"lowercase": True})])
    manifest = json.loads((folder / "lmforge.json").read_text())
    manifest["source"] = {"type": "csv", "plugin_module": "lmforge.plugins.data.sources",
                          "settings": {"text_column": "review", "label_column": "stars",
                                       "errors": "strict"}}
    rehash(folder, manifest)
    return folder


def expected_continuation(folder, prompt, n):
    tokenizer = load_bundle(folder).tokenizer
    return tokenizer.decode(kv_greedy(tokenizer.encode(prompt), n, context=16))


def test_generate_continues_a_prompt_from_a_bundle_without_importing_torch(lm):
    args = ("generate", str(lm), "--prompt", "hello", "--temperature", "0",
            "--max-new-tokens", "20")
    done = lmforge(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello" + expected_continuation(lm, "hello", 20) + "\n"
    assert "torch imported: False" in done.stderr
    assert run(*args).stdout == done.stdout  # the console script


def test_generate_stops_at_a_stop_string_and_checks_its_arguments(lm):
    full = expected_continuation(lm, "hello", 30)
    stop = full[3:5]
    done = lmforge("generate", str(lm), "--prompt", "hello", "--temperature", "0",
                   "--max-new-tokens", "30", "--stop", stop)
    assert done.stdout == "hello" + full[:full.index(stop)] + "\n"
    bad = lmforge("generate", str(lm), "--top-p", "1.5")
    assert bad.returncode == 2
    assert "top_p must be in (0, 1] or unset, found 1.5" in bad.stderr


def test_predict_labels_texts_from_a_bundle_as_json(classifier):
    done = lmforge("predict", str(classifier), "--text", "A Warm film", "--text", "dull",
                   "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    expected = Classifier(load_bundle(classifier)).predict(["A Warm film", "dull"])
    assert [r["text"] for r in rows] == ["a warm film", "dull"]  # as the run's normalize left it
    assert [(r["label"], r["probabilities"]) for r in rows] == [
        (e["label"], e["probabilities"]) for e in expected]
    assert "torch imported: False" in done.stderr


def test_predict_reads_stdin_and_data_files_the_way_the_run_did(classifier, tmp_path):
    done = run("predict", str(classifier), input="first text\n\nsecond\n")
    assert done.returncode == 0, done.stderr
    assert "first text" in done.stdout and "second" in done.stdout
    data = tmp_path / "held-out.csv"
    data.write_text("review,stars\nlovely,pos\nboring,neg\n")
    done = lmforge("predict", str(classifier), "--file", str(data), "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["text"], r["true_label"]) for r in rows] == [("lovely", "pos"), ("boring", "neg")]


def test_the_wrong_task_is_a_clear_error_and_a_run_folder_takes_the_run_path(lm, classifier,
                                                                           tmp_path):
    done = lmforge("predict", str(lm), "--text", "x")
    assert done.returncode == 2
    assert "holds a lm model, which does not predict labels" in done.stderr
    done = lmforge("generate", str(classifier))
    assert "holds a classify model, which does not generate text" in done.stderr
    done = lmforge("generate", str(tmp_path))
    assert done.returncode == 2
    assert "torch imported: True" in done.stderr  # loaded the run path, which found no run
    assert "config.yaml" in done.stderr
