"""Tiny numpy "models" behind a decode-graph interface, and the same models as torch
LanguageModels, so the runtime's engine can be checked against the torch generation path.

Every figure is an integer held in float64, so sums and products are exact and a token's
logits do not depend on how rows were batched or padded: batched and lone decoding must agree
exactly, and so must the engine and the torch path.
"""

import numpy as np
import torch
from torch import nn

from lmforge.interfaces.model import LanguageModel
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.plugins.runtime.manifest import GraphEntry
from lmforge.settings import NoSettings

VOCAB = 40
DIM = 6
HEADS = 1
_rng = np.random.default_rng(0)
KEY_EMBED = _rng.integers(-3, 4, size=(VOCAB, DIM)).astype(np.float64)
VALUE_EMBED = _rng.integers(-3, 4, size=(VOCAB, DIM)).astype(np.float64)
POSITION_EMBED = _rng.integers(-2, 3, size=(512, DIM)).astype(np.float64)
HEAD = _rng.integers(-5, 6, size=(VOCAB, DIM)).astype(np.float64)
RECURRENT_HEAD = _rng.integers(-5, 6, size=(VOCAB, DIM)).astype(np.float64)


def kv_logits(keys: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits (n, V) of the last position from the attended cache entries (n, k, D)."""
    feature = 2 * (keys * mask[..., None]).sum(1) + (values * mask[..., None]).sum(1)
    return feature @ HEAD.T


def kv_graph(context: int | None = None) -> GraphEntry:
    cache = ["batch", HEADS, "past", DIM]
    return GraphEntry.model_validate({
        "file": "decode.onnx",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "step"]},
                   {"name": "position_ids", "dtype": "int64", "shape": ["batch", "step"]},
                   {"name": "attention_mask", "dtype": "bool", "shape": ["batch", "total"]},
                   {"name": "past_key_0", "dtype": "float32", "shape": cache},
                   {"name": "past_value_0", "dtype": "float32", "shape": cache}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", VOCAB]},
                    {"name": "present_key_0", "dtype": "float32", "shape": cache},
                    {"name": "present_value_0", "dtype": "float32", "shape": cache}],
        "state": {"kind": "kv_cache", "inputs": ["past_key_0", "past_value_0"],
                  "outputs": ["present_key_0", "present_value_0"], "batch_axis": 0,
                  "sequence_axis": 2}})


class KvSession:
    """The decode graph of a one-layer "attention" model: each position's cache entry is
    (key, value) = (KEY_EMBED[token] + POSITION_EMBED[position], VALUE_EMBED[token]); the last
    position's logits come from the sum over the attended entries. Returns only the new
    entries, as the contract says. Records the batch size of every call."""

    def __init__(self, fail_on_token: int | None = None, full_present: bool = False):
        self.batch_sizes: list[int] = []
        self.fail_on_token = fail_on_token
        self.full_present = full_present

    def run(self, output_names, feeds):
        ids, positions, mask = feeds["input_ids"], feeds["position_ids"], feeds["attention_mask"]
        if self.fail_on_token is not None and (ids == self.fail_on_token).any():
            raise RuntimeError("the graph failed")
        n, step = ids.shape
        past_keys, past_values = feeds["past_key_0"][:, 0], feeds["past_value_0"][:, 0]
        assert mask.shape == (n, past_keys.shape[1] + step)
        new_keys = KEY_EMBED[ids] + POSITION_EMBED[positions]  # (n, step, D)
        new_values = VALUE_EMBED[ids]
        keys = np.concatenate([past_keys, new_keys], axis=1)
        values = np.concatenate([past_values, new_values], axis=1)
        self.batch_sizes.append(n)
        logits = kv_logits(keys, values, mask).astype(np.float32)
        if self.full_present:
            return [logits, keys[:, None].astype(np.float32), values[:, None].astype(np.float32)]
        return [logits, new_keys[:, None].astype(np.float32),
                new_values[:, None].astype(np.float32)]


class KvModel(LanguageModel):
    """The same model as KvSession, as a torch LanguageModel with a plain list cache."""

    def __init__(self, max_context: int | None):
        super().__init__()
        self.max_context = max_context
        self.weight = nn.Parameter(torch.zeros(1))

    def generate_step(self, idx, state):
        keys, values = state or (np.zeros((0, DIM)), np.zeros((0, DIM)))
        ids = idx[0].numpy()
        positions = np.arange(len(keys), len(keys) + len(ids))
        if self.max_context is not None:
            assert positions[-1] < self.max_context
        keys = np.concatenate([keys, KEY_EMBED[ids] + POSITION_EMBED[positions]])
        values = np.concatenate([values, VALUE_EMBED[ids]])
        logits = kv_logits(keys[None], values[None], np.ones((1, len(keys)), dtype=bool))
        return torch.from_numpy(logits.astype(np.float32)), (keys, values)

    def flops_per_token(self):
        return 0


def recurrent_graph() -> GraphEntry:
    state = [1, "batch", DIM]
    return GraphEntry.model_validate({
        "file": "decode.onnx",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "step"]},
                   {"name": "h", "dtype": "float32", "shape": state},
                   {"name": "c", "dtype": "float32", "shape": state}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", VOCAB]},
                    {"name": "h_out", "dtype": "float32", "shape": state},
                    {"name": "c_out", "dtype": "float32", "shape": state}],
        "state": {"kind": "recurrent", "inputs": ["h", "c"], "outputs": ["h_out", "c_out"],
                  "batch_axis": 1}})


def recurrent_step(h: np.ndarray, c: np.ndarray, token: np.ndarray):
    """One token through the "recurrence": h, c (B, D) and token (B,) -> new h, c."""
    h = (3 * h + VALUE_EMBED[token]) % 11
    c = (c + h + KEY_EMBED[token]) % 7
    return h, c


class RecurrentSession:
    def __init__(self):
        self.batch_sizes: list[int] = []

    def run(self, output_names, feeds):
        ids = feeds["input_ids"]
        h, c = feeds["h"][0].astype(np.float64), feeds["c"][0].astype(np.float64)
        for t in range(ids.shape[1]):
            h, c = recurrent_step(h, c, ids[:, t])
        self.batch_sizes.append(ids.shape[0])
        logits = h @ RECURRENT_HEAD.T + c @ HEAD.T
        return [logits.astype(np.float32), h[None].astype(np.float32),
                c[None].astype(np.float32)]


class RecurrentModel(LanguageModel):
    max_context = None

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def generate_step(self, idx, state):
        h, c = state or (np.zeros((1, DIM)), np.zeros((1, DIM)))
        for token in idx[0].numpy():
            h, c = recurrent_step(h, c, np.array([token]))
        logits = h @ RECURRENT_HEAD.T + c @ HEAD.T
        return torch.from_numpy(logits.astype(np.float32)), (h, c)

    def flops_per_token(self):
        return 0


class Letters(Tokenizer):
    """Id 0 is eos; ids 1.. are the letters a, b, c, ...; decoding drops eos."""

    def __init__(self):
        super().__init__(NoSettings())

    def train(self, texts):
        pass

    def encode(self, text):
        return [ord(ch) - ord("a") + 1 for ch in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + i - 1) for i in ids if i > 0)

    @property
    def vocab_size(self):
        return VOCAB

    @property
    def special_tokens(self):
        return {"eos": 0, "pad": 0}

    def get_state(self):
        return None

    def set_state(self, state):
        pass
