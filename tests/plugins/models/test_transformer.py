"""Tests of the transformer encoder classifier: learning, padding, backends, settings, FLOPs."""

import pydantic
import pytest
import torch

from lmforge import ops
from lmforge.errors import LmforgeError
from lmforge.interfaces.model import ModelSpec
from lmforge.plugins.models.transformer import Transformer, TransformerClassifier

from .classify_checks import VOCAB, assert_padding_invariant, held_out_accuracy

TINY = dict(n_layer=2, n_head=2, n_embd=16, max_length=24, dropout=0.0, kernels="reference")
FUSED_BUILT = ops.why_not_fused("attention") is None
BACKENDS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(
    not FUSED_BUILT, reason="fused attention kernel not built"))]


def build(num_labels=2, **overrides) -> TransformerClassifier:
    settings = Transformer.Settings(**{**TINY, **overrides})
    return Transformer(settings).build(
        ModelSpec("classify", VOCAB, pad_id=0, num_labels=num_labels))


@pytest.fixture(autouse=True)
def _no_kernels_override(monkeypatch):
    monkeypatch.delenv("LMFORGE_KERNELS", raising=False)
    torch.manual_seed(0)


def test_registered_with_its_context_length(registry):
    model = registry.get("model", "transformer").create({"max_length": 64,
                                                          "kernels": "reference"})
    assert model.context_length() == 64
    assert isinstance(model.build(ModelSpec("classify", VOCAB, num_labels=3)),
                      TransformerClassifier)


def test_longer_than_max_length_refused():
    model = build(max_length=8)
    model(torch.ones(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_length=8 tokens, found 9"):
        model(torch.ones(1, 9, dtype=torch.long), torch.zeros(1, 9, dtype=torch.bool))


def test_cls_vector_only_with_first_pooling():
    assert build(pooling="mean").cls is None
    first = build(pooling="first")
    assert first.cls.shape == (16,)
    assert first.wpe.num_embeddings == 25  # [CLS] takes a position of its own
    assert first.num_parameters() == build(pooling="mean").num_parameters() + 16 + 16


@pytest.mark.parametrize("backend, pooling", [("reference", "mean"), pytest.param(
    "fused", "first", marks=pytest.mark.skipif(not FUSED_BUILT, reason="fused attention "
                                                                        "not built"))])
def test_learns_a_marker_token(backend, pooling):
    assert held_out_accuracy(build(kernels=backend, pooling=pooling), lr=3e-3) >= 0.9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_padding_changes_nothing(backend, pooling):
    assert_padding_invariant(build(kernels=backend, pooling=pooling))


@pytest.mark.skipif(not FUSED_BUILT, reason="fused attention kernel not built")
@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_fused_matches_reference(pooling):
    reference = build(pooling=pooling).eval()
    fused = build(pooling=pooling, kernels="fused").eval()
    fused.load_state_dict(reference.state_dict())
    idx = torch.randint(2, VOCAB, (3, 11))
    pad_mask = torch.arange(11)[None, :] >= torch.tensor([11, 5, 1])[:, None]
    torch.testing.assert_close(fused(idx, pad_mask), reference(idx, pad_mask),
                               rtol=1e-5, atol=1e-5)


def test_flops_per_token_formula_and_growth():
    L, C, T = 2, 16, 24
    blocks = L * (12 * C * C + 13 * C) + 2 * C  # as gpt's: weights, biases, LayerNorms
    assert build().flops_per_token() == 2 * blocks + 4 * L * T * C
    assert build(n_embd=32).flops_per_token() > build().flops_per_token()


def test_lm_task_refused():
    with pytest.raises(LmforgeError, match="for lm use gpt"):
        Transformer(Transformer.Settings()).build(ModelSpec("lm", VOCAB))


@pytest.mark.parametrize("settings, message", [
    (dict(n_embd=10, n_head=4), "divisible by n_head"),
    (dict(max_length=0), "greater than or equal to 1"),
    (dict(pooling="last"), "'mean' or 'first'"),
    (dict(kernels="fast"), "'auto', 'fused' or 'reference'"),
    (dict(block_size=64), "Extra inputs"),
])
def test_settings_validation(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        Transformer.Settings(**settings)
