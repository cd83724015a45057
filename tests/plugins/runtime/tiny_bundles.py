"""Small bundles written by hand (graphs built with onnx.helper, a trained char tokenizer, a
manifest with hashes), with numpy references of what their graphs compute. Torch-free."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ALPHABET = "abcdefghijklmnopqrstuvwxyz "
VOCAB = 3 + len(ALPHABET)  # eos, pad, unk, then the characters
DIM = 5
LABELS = ["neg", "neu", "pos"]
_rng = np.random.default_rng(1)
EMBED = _rng.integers(-3, 4, size=(VOCAB, DIM)).astype(np.float32)
KEY_EMBED = _rng.integers(-3, 4, size=(VOCAB, DIM)).astype(np.float32)
POSITION_EMBED = _rng.integers(-2, 3, size=(64, DIM)).astype(np.float32)
HEAD = _rng.integers(-4, 5, size=(VOCAB, DIM)).astype(np.float32)
LABEL_HEAD = _rng.normal(0, 0.3, size=(DIM, len(LABELS))).astype(np.float32)
OPSET = [helper.make_opsetid("", 17)]


def _constants(**arrays):
    return [numpy_helper.from_array(array, name) for name, array in arrays.items()]


def _axes(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _spec(name, dtype, shape):
    return {"name": name, "dtype": dtype, "shape": shape}


def _value_info(spec):
    types = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT, "bool": TensorProto.BOOL}
    return helper.make_tensor_value_info(spec["name"], types[spec["dtype"]], spec["shape"])


def _model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", [_value_info(s) for s in inputs],
                              [_value_info(s) for s in outputs], initializers)
    return helper.make_model(graph, opset_imports=OPSET)


def classifier_graph():
    """A bag of embeddings: logits = (sum of the real tokens' EMBED rows) @ LABEL_HEAD."""
    inputs = [_spec("input_ids", "int64", ["batch", "sequence"]),
              _spec("pad_mask", "bool", ["batch", "sequence"])]
    outputs = [_spec("logits", "float32", ["batch", len(LABELS)])]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
             helper.make_node("Not", ["pad_mask"], ["keep"]),
             helper.make_node("Cast", ["keep"], ["keepf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["keepf", "last"], ["keep3"]),
             helper.make_node("Mul", ["emb", "keep3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "one"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"])]
    initializers = [*_constants(E=EMBED, W=LABEL_HEAD), _axes("last", [-1]), _axes("one", [1])]
    return _model(nodes, inputs, outputs, initializers), inputs, outputs


def classifier_logits(ids_rows):
    return np.stack([EMBED[row].sum(0) @ LABEL_HEAD for row in ids_rows])


def kv_decode_graph():
    """One "attention" layer: a position's cache entry is (KEY_EMBED[token] + POSITION_EMBED[
    position], EMBED[token]); logits = (2 * attended keys + attended values summed) @ HEAD.T."""
    cache = ["batch", 1, "past", DIM]
    inputs = [_spec("input_ids", "int64", ["batch", "step"]),
              _spec("position_ids", "int64", ["batch", "step"]),
              _spec("attention_mask", "bool", ["batch", "total"]),
              _spec("past_key_0", "float32", cache), _spec("past_value_0", "float32", cache)]
    outputs = [_spec("logits", "float32", ["batch", VOCAB]),
               _spec("present_key_0", "float32", ["batch", 1, "step", DIM]),
               _spec("present_value_0", "float32", ["batch", 1, "step", DIM])]
    nodes = [helper.make_node("Gather", ["K", "input_ids"], ["token_keys"]),
             helper.make_node("Gather", ["P", "position_ids"], ["position_keys"]),
             helper.make_node("Add", ["token_keys", "position_keys"], ["new_keys"]),
             helper.make_node("Unsqueeze", ["new_keys", "one"], ["present_key_0"]),
             helper.make_node("Gather", ["E", "input_ids"], ["new_values"]),
             helper.make_node("Unsqueeze", ["new_values", "one"], ["present_value_0"]),
             helper.make_node("Concat", ["past_key_0", "present_key_0"], ["keys"], axis=2),
             helper.make_node("Concat", ["past_value_0", "present_value_0"], ["values"], axis=2),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "one_three"], ["mask4"]),
             helper.make_node("Mul", ["keys", "mask4"], ["kept_keys"]),
             helper.make_node("Mul", ["values", "mask4"], ["kept_values"]),
             helper.make_node("Add", ["kept_keys", "kept_keys"], ["double_keys"]),
             helper.make_node("Add", ["double_keys", "kept_values"], ["both"]),
             helper.make_node("ReduceSum", ["both", "one_two"], ["feature"], keepdims=0),
             helper.make_node("MatMul", ["feature", "HT"], ["logits"])]
    initializers = [*_constants(K=KEY_EMBED, P=POSITION_EMBED, E=EMBED,
                                HT=np.ascontiguousarray(HEAD.T)),
                    _axes("one", [1]), _axes("one_three", [1, 3]), _axes("one_two", [1, 2])]
    return _model(nodes, inputs, outputs, initializers), inputs, outputs


def kv_greedy(prompt, max_new_tokens, context):
    """Greedy tokens of kv_decode_graph's model computed from scratch at every step, dropping
    to the last context - 1 tokens past the context as the torch path does; stops at eos."""
    ids, start, out = list(prompt), 0, []
    if len(ids) > context:
        start = len(ids) - (context - 1)
    for _ in range(max_new_tokens):
        window = ids[start:]
        positions = np.arange(len(window))
        feature = 2 * (KEY_EMBED[window] + POSITION_EMBED[positions]).sum(0) + EMBED[window].sum(0)
        token = int(np.argmax(feature @ HEAD.T))
        if token == 0:
            break
        out.append(token)
        ids.append(token)
        if len(ids) - start > context:  # the next step would pass the context
            start = len(ids) - (context - 1)
    return out


def write_bundle(folder: Path, task: str, graphs: dict, *, registry, preprocess=(),
                 context_length=32, labels=None) -> Path:
    """A bundle folder: each graph (name -> (model, inputs, outputs, state)), a char tokenizer
    trained on ALPHABET, and the manifest with every file's SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = registry.get("tokenizer", "char").create()
    tokenizer.train([ALPHABET])
    tokenizer.save(folder / "tokenizer.json")
    manifest_graphs = {}
    for name, (model, inputs, outputs, state) in graphs.items():
        onnx.save(model, folder / f"{name}.onnx")
        manifest_graphs[name] = {"file": f"{name}.onnx", "inputs": inputs, "outputs": outputs,
                                 "state": state}
    manifest = {
        "format": 1, "name": "tiny", "task": task, "model": "hand-made", "vocab_size": VOCAB,
        "labels": labels,
        "tokenizer": {"file": "tokenizer.json", "plugin_module": "lmforge.plugins.tokenizers",
                      "eos_id": 0, "pad_id": 1},
        "preprocess": [{"type": kind, "settings": settings,
                        "plugin_module": "lmforge.plugins.data.preprocess"}
                       for kind, settings in preprocess],
        "graphs": manifest_graphs, "quantized": None,
        "generation": {"temperature": 0.8, "top_k": 40, "top_p": None, "max_new_tokens": 50,
                       "repetition_penalty": 1.0},
        "limits": {"context_length": context_length, "max_new_tokens": 256, "max_batch": 8},
        "files": {}, "versions": {"lmforge": "test"}}
    rehash(folder, manifest)
    return folder


def rehash(folder: Path, manifest: dict | None = None) -> dict:
    """Write the manifest with the hashes of every other file in the folder; return it."""
    path = folder / "lmforge.json"
    manifest = manifest if manifest is not None else json.loads(path.read_text())
    manifest["files"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(folder.iterdir())
                         if p.name != "lmforge.json" and p.is_file() and not p.is_symlink()}
    path.write_text(json.dumps(manifest, indent=1))
    return manifest


KV_STATE = {"kind": "kv_cache", "inputs": ["past_key_0", "past_value_0"],
            "outputs": ["present_key_0", "present_value_0"], "batch_axis": 0,
            "sequence_axis": 2}


def lm_bundle(folder: Path, registry, context_length=16) -> Path:
    model, inputs, outputs = kv_decode_graph()
    return write_bundle(folder, "lm", {"decode": (model, inputs, outputs, KV_STATE)},
                        registry=registry, context_length=context_length)


def classifier_bundle(folder: Path, registry, preprocess=()) -> Path:
    model, inputs, outputs = classifier_graph()
    return write_bundle(folder, "classify", {"model": (model, inputs, outputs, None)},
                        registry=registry, preprocess=preprocess, labels=LABELS)
