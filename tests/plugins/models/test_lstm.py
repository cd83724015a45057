"""Tests of the lstm model: shapes, parameters, training, the recurrent state and generation."""

import pydantic
import pytest
import torch

from lmforge import ops
from lmforge.errors import LmforgeError
from lmforge.interfaces.model import ModelSpec
from lmforge.ops import lstm as lstm_ops
from lmforge.plugins.models.lstm import Lstm, LstmModule
from lmforge.plugins.tasks.generate import generate
from tests.conftest import KERNELS_EXPECTED

from .lm_checks import fit_repeated_pattern

VOCAB = 11
TINY = dict(n_embd=6, hidden_size=10, n_layer=2, kernels="reference")


def build(vocab=VOCAB, **overrides) -> LstmModule:
    return Lstm(Lstm.Settings(**{**TINY, **overrides})).build(ModelSpec("lm", vocab))


@pytest.fixture(autouse=True)
def _no_kernels_override(monkeypatch):
    monkeypatch.delenv("LMFORGE_KERNELS", raising=False)
    torch.manual_seed(0)


def test_registered(registry):
    entry = registry.get("model", "lstm")
    assert entry.component is Lstm
    model = entry.create({"hidden_size": 16, "kernels": "reference"})
    assert isinstance(model.build(ModelSpec("lm", VOCAB)), LstmModule)


def test_forward_shape_and_no_context_limit():
    model = build()
    assert model.max_context is None
    assert model(torch.randint(0, VOCAB, (3, 40))).shape == (3, 40, VOCAB)
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.randint(0, VOCAB, (5,)))


@pytest.mark.parametrize("n_layer", [1, 2, 3])
def test_parameter_count_by_hand(n_layer):
    E, H, V = 6, 10, VOCAB
    # each layer: four gates from [input, h] plus two bias vectors (PyTorch keeps b_ih and b_hh)
    layers = sum(4 * H * ((E if i == 0 else H) + H) + 8 * H for i in range(n_layer))
    expected = V * E + layers + H * V + V
    assert build(n_layer=n_layer).num_parameters() == expected


def test_tied_embeddings_share_storage():
    tied = build(n_embd=10, tie_embeddings=True)
    assert tied.head.weight.data_ptr() == tied.embedding.weight.data_ptr()
    assert tied.num_parameters() == build(n_embd=10).num_parameters() - VOCAB * 10
    untied = build(n_embd=10)
    assert untied.head.weight.data_ptr() != untied.embedding.weight.data_ptr()


def test_tying_needs_equal_widths():
    with pytest.raises(pydantic.ValidationError, match="n_embd == hidden_size.*6.*10"):
        Lstm.Settings(**{**TINY, "tie_embeddings": True})


def test_flops_per_token_formula():
    E, H, V = 6, 10, VOCAB
    assert build().flops_per_token() == 2 * 4 * H * (E + H) + 2 * 4 * H * (2 * H) + 2 * H * V


def test_training_lowers_the_loss():
    model = build(n_embd=16, hidden_size=32)
    losses = fit_repeated_pattern(model, lr=2e-2)
    assert losses[-1] < 0.5 * losses[0]


def test_recurrent_state_matches_full_recompute():
    model = build(dropout=0.2).eval()
    seq = torch.randint(0, VOCAB, (2, 12))
    full = model(seq)  # (2, 12, V)
    logits, state = model.generate_step(seq[:, :5], None)
    h, c = state
    assert h.shape == c.shape == (2, 2, 10)
    torch.testing.assert_close(logits, full[:, 4], atol=1e-5, rtol=1e-5)
    for t in range(5, 9):
        logits, state = model.generate_step(seq[:, t:t + 1], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)
    logits, state = model.generate_step(seq[:, 9:12], state)
    torch.testing.assert_close(logits, full[:, 11], atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_recompute():
    model = build().eval()
    prompt = [3, 1, 4]
    carried = list(generate(model, prompt, max_new_tokens=30, temperature=0))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(30):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert carried == ids[len(prompt):]


@pytest.mark.filterwarnings("ignore:lmforge. the fused lstm kernel")
def test_kernels_auto_trains_on_the_reference_and_generates_fused_where_built():
    model = build(kernels="auto")
    assert model.kernels_backend == "reference"
    expected = ops.AUTO_FUSED if KERNELS_EXPECTED else "reference"
    assert model.step_backend == expected


@pytest.mark.filterwarnings("ignore:lmforge. the fused lstm kernel")
@pytest.mark.skipif(ops.why_not_fused("lstm_step") is not None, reason="fused lstm not built")
def test_auto_generation_steps_match_the_reference(monkeypatch):
    reference = build(kernels="reference").eval()
    auto = build(kernels="auto").eval()
    auto.load_state_dict(reference.state_dict())
    calls = []
    real_step = lstm_ops.fused_lstm_step
    monkeypatch.setattr(lstm_ops, "fused_lstm_step",
                        lambda *a, **k: calls.append(1) or real_step(*a, **k))
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        logits, state = reference.generate_step(prompt, None)
        auto_logits, auto_state = auto.generate_step(prompt, None)
        for token in (2, 6, 5):
            step = torch.tensor([[token]])
            logits, state = reference.generate_step(step, state)
            auto_logits, auto_state = auto.generate_step(step, auto_state)
            torch.testing.assert_close(auto_logits, logits, rtol=1e-5, atol=1e-5)
    assert len(calls) == 3  # the prompt went through nn.LSTM, each single step the fused op


def test_fused_kernels_fail_clearly_where_not_built(monkeypatch):
    monkeypatch.setattr(ops, "why_not_fused", lambda op: "not built")
    with pytest.raises(LmforgeError, match="fused.*use kernels: auto"):
        build(kernels="fused")


def test_fused_from_the_environment_fails_clearly_where_not_built(monkeypatch):
    monkeypatch.setattr(ops, "why_not_fused", lambda op: "not built")
    monkeypatch.setenv("LMFORGE_KERNELS", "fused")
    with pytest.raises(LmforgeError, match="fused"):
        build(kernels="auto")


@pytest.mark.parametrize("settings, message", [
    (dict(hidden_size=0), "greater than or equal to 1"),
    (dict(dropout=-0.1), "greater than or equal to 0"),
    (dict(kernels="cudnn"), "'auto', 'fused' or 'reference'"),
    (dict(num_layers=2), "Extra inputs"),
])
def test_settings_validation(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        Lstm.Settings(**settings)


def test_decode_graph_carries_the_recurrent_state():
    model = build().eval()
    graph = next(g for g in model.export_graphs() if g.name == "decode")
    assert graph.state.kind == "recurrent" and graph.state.batch_axis == 1
    assert graph.inputs[1].shape == (2, "batch", 10)
    seq = torch.randint(0, VOCAB, (3, 8))
    zeros = torch.zeros(2, 3, 10)
    with torch.no_grad():
        logits, h, c = graph.module(seq[:, :5], zeros, zeros)
        expected, state = model.generate_step(seq[:, :5], None)
        torch.testing.assert_close(logits, expected)
        logits, h, c = graph.module(seq[:, 5:], h, c)
        expected, state = model.generate_step(seq[:, 5:], state)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close((h, c), state)
