"""Tests of the lstm model as a classifier: learning, padding, backends, settings, FLOPs."""

import pydantic
import pytest
import torch

from lmforge import ops
from lmforge.errors import LmforgeError
from lmforge.interfaces.model import ModelSpec
from lmforge.plugins.models.lstm import Lstm, LstmModule
from lmforge.plugins.models.lstm_classifier import LstmClassifier, reverse_within_length

from .classify_checks import VOCAB, assert_padding_invariant, held_out_accuracy

TINY = dict(n_embd=8, hidden_size=12, n_layer=2, bidirectional=True, kernels="reference")
FUSED_BUILT = ops.why_not_fused("lstm") is None
BACKENDS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(
    not FUSED_BUILT, reason="fused lstm kernel not built"))]


def build(num_labels=2, **overrides) -> LstmClassifier:
    settings = Lstm.Settings(**{**TINY, **overrides})
    return Lstm(settings).build(ModelSpec("classify", VOCAB, pad_id=0, num_labels=num_labels))


@pytest.fixture(autouse=True)
def _no_kernels_override(monkeypatch):
    monkeypatch.delenv("LMFORGE_KERNELS", raising=False)
    torch.manual_seed(0)


def test_registered_for_both_tasks(registry):
    model = registry.get("model", "lstm").create({"hidden_size": 8, "kernels": "reference"})
    assert model.tasks == ("lm", "classify")
    assert isinstance(model.build(ModelSpec("classify", VOCAB, num_labels=3)), LstmClassifier)
    assert isinstance(model.build(ModelSpec("lm", VOCAB)), LstmModule)


def test_reverse_within_length_keeps_padding_in_place():
    x = torch.arange(10.0).view(2, 5, 1)
    reversed_x = reverse_within_length(x, torch.tensor([3, 5]))
    assert reversed_x[..., 0].tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    assert torch.equal(reverse_within_length(reversed_x, torch.tensor([3, 5])), x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_learns_a_marker_token(backend):
    model = build(kernels=backend, pooling="max", n_layer=1, hidden_size=16)
    assert held_out_accuracy(model, lr=2e-2) >= 0.9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_padding_changes_nothing(backend, bidirectional, pooling):
    assert_padding_invariant(build(kernels=backend, bidirectional=bidirectional, pooling=pooling))


@pytest.mark.skipif(not FUSED_BUILT, reason="fused lstm kernel not built")
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_fused_matches_reference(pooling):
    reference = build(pooling=pooling, dropout=0.3).eval()
    fused = build(pooling=pooling, dropout=0.3, kernels="fused").eval()
    fused.load_state_dict(reference.state_dict())
    idx = torch.randint(2, VOCAB, (3, 9))
    pad_mask = torch.arange(9)[None, :] >= torch.tensor([9, 4, 1])[:, None]
    torch.testing.assert_close(fused(idx, pad_mask), reference(idx, pad_mask),
                               rtol=1e-5, atol=1e-5)


def test_flops_per_token_formula_and_growth():
    E, H = 8, 12
    # two directions per layer; the second layer reads both directions' states
    expected = 2 * (2 * 4 * H * (E + H)) + 2 * (2 * 4 * H * (2 * H + H))
    assert build().flops_per_token() == expected
    assert build(bidirectional=False).flops_per_token() < expected
    assert build(hidden_size=24).flops_per_token() > expected


def test_task_specific_settings_are_checked_at_build():
    with pytest.raises(LmforgeError, match="bidirectional: false"):
        Lstm(Lstm.Settings(**TINY)).build(ModelSpec("lm", VOCAB))
    with pytest.raises(LmforgeError, match="tie_embeddings: false"):
        build(n_embd=12, tie_embeddings=True)
    with pytest.raises(LmforgeError, match="num_labels >= 2"):
        Lstm(Lstm.Settings(**TINY)).build(ModelSpec("classify", VOCAB))


def test_pooling_setting_validated():
    with pytest.raises(pydantic.ValidationError, match="'mean', 'max' or 'last'"):
        Lstm.Settings(pooling="first")
