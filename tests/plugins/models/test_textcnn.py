"""Tests of the textcnn classifier: shapes, learning, padding, settings, FLOPs."""

import pydantic
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.interfaces.model import ModelSpec
from lmforge.plugins.models.textcnn import TextCnn, TextCnnModule

from .classify_checks import VOCAB, assert_padding_invariant, held_out_accuracy

TINY = dict(n_embd=16, kernel_sizes=[2, 3, 5], num_filters=8, dropout=0.0)


def build(num_labels=2, **overrides) -> TextCnnModule:
    settings = TextCnn.Settings(**{**TINY, **overrides})
    return TextCnn(settings).build(ModelSpec("classify", VOCAB, pad_id=0, num_labels=num_labels))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registered(registry):
    entry = registry.get("model", "textcnn")
    assert entry.component is TextCnn
    model = entry.create({"num_filters": 4})
    assert isinstance(model.build(ModelSpec("classify", VOCAB, num_labels=3)), TextCnnModule)


def test_logits_shape_and_short_sequences():
    model = build(num_labels=3)
    assert model(torch.randint(0, VOCAB, (4, 7)), torch.zeros(4, 7, dtype=torch.bool)).shape == (
        4, 3)
    # a single token is narrower than every kernel but still gives finite logits
    logits = model(torch.tensor([[5]]), torch.tensor([[False]]))
    assert torch.isfinite(logits).all()


def test_learns_a_marker_token():
    assert held_out_accuracy(build(dropout=0.5), lr=1e-2) >= 0.9


def test_padding_changes_nothing():
    assert_padding_invariant(build())


def test_bad_inputs_are_refused():
    model = build()
    with pytest.raises(ValueError, match="pad_mask of shape"):
        model(torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="padding must be on the right"):
        model(torch.ones(1, 3, dtype=torch.long), torch.tensor([[False, True, False]]))
    with pytest.raises(ValueError, match="at least one real token"):
        model(torch.ones(1, 2, dtype=torch.long), torch.tensor([[True, True]]))


def test_flops_per_token_grow_with_width():
    E, F = 16, 8
    assert build().flops_per_token() == 2 * (2 + 3 + 5) * E * F
    assert build(num_filters=16).flops_per_token() > build().flops_per_token()
    assert build(n_embd=32).flops_per_token() > build().flops_per_token()


def test_lm_task_refused():
    with pytest.raises(LmforgeError, match="textcnn supports the tasks classify"):
        TextCnn(TextCnn.Settings()).build(ModelSpec("lm", VOCAB))
    with pytest.raises(LmforgeError, match="num_labels >= 2"):
        TextCnn(TextCnn.Settings()).build(ModelSpec("classify", VOCAB))


@pytest.mark.parametrize("settings, message", [
    (dict(kernel_sizes=[]), "at least 1 item"),
    (dict(kernel_sizes=[3, 3]), "distinct widths"),
    (dict(kernel_sizes=[0, 3]), "widths from 1 to 64, found \\[0, 3\\]"),
    (dict(num_filters=0), "greater than or equal to 1"),
    (dict(dropout=1.0), "less than 1"),
    (dict(filters=100), "Extra inputs"),
])
def test_settings_validation(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        TextCnn.Settings(**settings)
