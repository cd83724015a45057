"""Loading bundles: manifest checks, paths kept inside the bundle, hashes; then generation and
classification through onnxruntime on hand-made graphs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.plugins.runtime.bundle import load_bundle  # noqa: E402
from lmforge.plugins.runtime.classify import Classifier  # noqa: E402
from lmforge.plugins.runtime.generate import Engine, Sampling, generate_text  # noqa: E402
from lmforge.plugins.runtime.manifest import BundleError, is_bundle  # noqa: E402

from .tiny_bundles import (  # noqa: E402
    LABELS,
    classifier_bundle,
    classifier_logits,
    kv_greedy,
    lm_bundle,
    rehash,
)


def edit_manifest(folder, change):
    manifest = json.loads((folder / "lmforge.json").read_text())
    change(manifest)
    (folder / "lmforge.json").write_text(json.dumps(manifest))


# --- generation and classification ---------------------------------------------------------

def test_engine_over_onnxruntime_decodes_as_the_reference(tmp_path, registry):
    bundle = load_bundle(lm_bundle(tmp_path / "b", registry, context_length=16))
    engine = Engine.for_bundle(bundle, max_batch=3)
    prompts = [[4], [5, 6, 7], [3] * 20, [10, 11], [12, 13, 14, 15, 16]]
    requests = [engine.submit(p, Sampling(max_new_tokens=30, temperature=0)) for p in prompts]
    while engine.step():
        pass
    for request, prompt in zip(requests, prompts, strict=True):
        assert request.generated == kv_greedy(prompt, 30, context=16)
    assert any(len(r.generated) == 30 for r in requests)  # some ran past the context


def test_generate_text_streams_a_bundle_s_continuation(tmp_path, registry):
    bundle = load_bundle(lm_bundle(tmp_path / "b", registry))
    tokens = kv_greedy(bundle.tokenizer.encode("hello"), 25, context=16)
    text = "".join(generate_text(bundle, "hello", max_new_tokens=25, temperature=0))
    assert text == bundle.tokenizer.decode(tokens)
    assert text


def test_classifier_labels_texts_like_the_reference(tmp_path, registry):
    folder = classifier_bundle(tmp_path / "c", registry,
                               preprocess=[("normalize", {"lowercase": True})])
    classifier = Classifier(load_bundle(folder))
    texts = ["a warm funny film", "DULL", "", "abc def ghi jkl mno", "zz"]
    results = classifier.predict(texts, batch_size=2)
    tokenizer = classifier.bundle.tokenizer
    ids = [tokenizer.encode(t.lower()) or [0] for t in texts]
    logits = classifier_logits(ids)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for result, row in zip(results, expected, strict=True):
        assert result["label"] == LABELS[int(row.argmax())]
        np.testing.assert_allclose(list(result["probabilities"].values()), row, rtol=1e-5)
        assert list(result["probabilities"]) == LABELS


def test_the_wrong_task_is_refused_by_name(tmp_path, registry):
    lm = load_bundle(lm_bundle(tmp_path / "lm", registry))
    classifier = load_bundle(classifier_bundle(tmp_path / "c", registry))
    with pytest.raises(LmforgeError, match="holds a lm model, which does not predict labels"):
        Classifier(lm)
    with pytest.raises(LmforgeError, match="holds a classify model, which does not generate"):
        Engine.for_bundle(classifier)


# --- manifest and files ----------------------------------------------------------------------

def test_is_bundle_tells_bundles_from_runs(tmp_path, registry):
    assert is_bundle(lm_bundle(tmp_path / "b", registry))
    assert not is_bundle(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("task"), r"lmforge.json: task: missing required field"),
    (lambda m: m.update(format=2), r"lmforge.json: format: this lmforge reads bundle format 1, "
                                   r"found 2"),
    (lambda m: m["limits"].update(max_batch=0), r"limits.max_batch: Input should be greater"),
    (lambda m: m["graphs"]["decode"]["state"].update(kind="ring"),
     r"graphs.decode.state.kind: Input should be 'kv_cache' or 'recurrent'"),
    (lambda m: m["graphs"]["decode"]["state"].update(outputs=["present_key_0"]),
     r"state inputs and outputs pair up"),
    (lambda m: m["files"].pop("decode.onnx"), r"missing from `files`.*decode.onnx"),
    (lambda m: m["graphs"].pop("decode"), r"a lm bundle needs a 'decode' graph"),
    (lambda m: m["tokenizer"].update(plugin_module="os"),
     r"tokenizer.plugin_module: 'os' is not an installed lmforge plugin"),
    (lambda m: m["tokenizer"].update(eos_id=2), r"tokenizer: the manifest says .*'eos_id': 2"),
    (lambda m: m.update(preprocess=[{"type": "shout", "plugin_module":
                                     "lmforge.plugins.data.preprocess"}]),
     r"preprocess\[0\].type: unknown preprocessor 'shout'"),
])
def test_a_bad_manifest_is_refused_naming_the_file_and_field(tmp_path, registry, change,
                                                             message):
    folder = lm_bundle(tmp_path / "b", registry)
    edit_manifest(folder, change)
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(folder)
    assert str(folder / "lmforge.json") in str(caught.value)


def test_not_a_bundle_and_unreadable_manifests(tmp_path):
    with pytest.raises(BundleError, match="not a bundle .no lmforge.json"):
        load_bundle(tmp_path)
    (tmp_path / "lmforge.json").write_text("{not json")
    with pytest.raises(BundleError, match="lmforge.json: not readable JSON"):
        load_bundle(tmp_path)


def test_a_tampered_file_is_refused_naming_it(tmp_path, registry):
    folder = lm_bundle(tmp_path / "b", registry)
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"char"', '"char" '))
    with pytest.raises(BundleError, match=r"tokenizer.json: SHA-256 \w+ differs from the "
                                          r"manifest's"):
        load_bundle(folder)


@pytest.mark.parametrize("name", ["../decode.onnx", "/etc/passwd", "sub/decode.onnx", "..", ""])
def test_paths_that_are_not_plain_names_are_refused(tmp_path, registry, name):
    folder = lm_bundle(tmp_path / "b", registry)
    edit_manifest(folder, lambda m: m["graphs"]["decode"].update(file=name) or
                  m["files"].update({name: "0" * 64}))
    with pytest.raises(BundleError, match="not a plain file name inside the bundle"):
        load_bundle(folder)


def test_a_symlink_leading_out_of_the_bundle_is_refused(tmp_path, registry):
    folder = lm_bundle(tmp_path / "b", registry)
    outside = tmp_path / "outside.onnx"
    (folder / "decode.onnx").rename(outside)
    os.symlink(outside, folder / "decode.onnx")
    with pytest.raises(BundleError, match="'decode.onnx' leads out of the bundle"):
        load_bundle(folder)


def test_a_symlink_inside_the_bundle_is_followed(tmp_path, registry):
    folder = lm_bundle(tmp_path / "b", registry)
    (folder / "decode.onnx").rename(folder / "real.onnx")
    os.symlink("real.onnx", folder / "decode.onnx")
    assert load_bundle(folder).session("decode") is not None


def external_data_bundle(tmp_path, registry, location):
    folder = lm_bundle(tmp_path / "b", registry)
    model = onnx.load(folder / "decode.onnx")
    onnx.save(model, folder / "decode.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=64)
    if location != "weights.bin":
        model = onnx.load(folder / "decode.onnx", load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, folder / "decode.onnx")
    rehash(folder)
    return folder


def test_external_data_inside_the_bundle_loads(tmp_path, registry):
    bundle = load_bundle(external_data_bundle(tmp_path, registry, "weights.bin"))
    engine = Engine.for_bundle(bundle)
    request = engine.submit([5, 6], Sampling(max_new_tokens=10, temperature=0))
    assert list(request.tokens()) == kv_greedy([5, 6], 10, context=32)


@pytest.mark.parametrize("location, message", [
    ("../weights.bin", "external data of tensor .* is not a plain file name"),
    ("/tmp/weights.bin", "external data of tensor .* is not a plain file name"),
])
def test_external_data_outside_the_bundle_is_refused(tmp_path, registry, location, message):
    folder = external_data_bundle(tmp_path, registry, location)
    with pytest.raises(BundleError, match=message):
        load_bundle(folder)


def test_external_data_the_manifest_does_not_hash_is_refused(tmp_path, registry):
    folder = external_data_bundle(tmp_path, registry, "weights.bin")
    edit_manifest(folder, lambda m: m["files"].pop("weights.bin"))
    with pytest.raises(BundleError, match="keeps its data in 'weights.bin', which the manifest "
                                          "does not hash"):
        load_bundle(folder)


def test_a_bundle_round_trip_in_a_fresh_process_imports_no_torch(tmp_path, registry):
    lm = lm_bundle(tmp_path / "lm", registry)
    classifier = classifier_bundle(tmp_path / "c", registry)
    script = f"""
import json, sys
from lmforge.plugins.runtime.bundle import load_bundle
from lmforge.plugins.runtime.classify import Classifier
from lmforge.plugins.runtime.generate import generate_text
text = "".join(generate_text(load_bundle({str(lm)!r}), "hello", max_new_tokens=20,
                             temperature=0))
labels = [r["label"] for r in Classifier(load_bundle({str(classifier)!r})).predict(["ab", "z"])]
print(json.dumps({{"text": text, "labels": labels, "torch": "torch" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    found = json.loads(done.stdout)
    bundle = load_bundle(lm)
    assert found["text"] == bundle.tokenizer.decode(
        kv_greedy(bundle.tokenizer.encode("hello"), 20, context=16))
    assert found["labels"] == [r["label"] for r in
                               Classifier(load_bundle(classifier)).predict(["ab", "z"])]
    assert found["torch"] is False
