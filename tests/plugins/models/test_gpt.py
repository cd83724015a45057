"""Tests of the gpt model: shapes, parameters, training, the KV cache, generation, classifying."""

import math

import pydantic
import pytest
import torch
import torch.nn.functional as F

from lmforge import ops
from lmforge.errors import LmforgeError
from lmforge.interfaces.model import ModelSpec
from lmforge.plugins.models.gpt import Gpt, GptClassifier, GptModule, KVCache
from lmforge.plugins.tasks.generate import generate
from tests.conftest import KERNELS_EXPECTED

from . import classify_checks
from .lm_checks import fit_repeated_pattern

VOCAB = 11
TINY = dict(n_layer=2, n_head=2, n_embd=8, block_size=16, kernels="reference")


def build(vocab=VOCAB, **overrides) -> GptModule:
    return Gpt(Gpt.Settings(**{**TINY, **overrides})).build(ModelSpec("lm", vocab))


@pytest.fixture(autouse=True)
def _no_kernels_override(monkeypatch):
    monkeypatch.delenv("LMFORGE_KERNELS", raising=False)
    torch.manual_seed(0)


def test_registered(registry):
    entry = registry.get("model", "gpt")
    assert entry.component is Gpt
    model = entry.create({"n_layer": 1, "n_embd": 16, "kernels": "reference"})
    assert isinstance(model.build(ModelSpec("lm", VOCAB)), GptModule)


def test_forward_shape_and_context_limit():
    model = build()
    assert model.max_context == 16
    assert model(torch.randint(0, VOCAB, (3, 16))).shape == (3, 16, VOCAB)
    assert model(torch.randint(0, VOCAB, (2, 1))).shape == (2, 1, VOCAB)
    with pytest.raises(ValueError, match="block_size=16.*17"):
        model(torch.randint(0, VOCAB, (1, 17)))
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.randint(0, VOCAB, (16,)))


@pytest.mark.parametrize("bias, tie", [(True, True), (True, False), (False, True)])
def test_parameter_count_by_hand(bias, tie):
    L, C, T, V = 2, 8, 16, VOCAB
    # qkv C*3C, attention projection C*C, MLP C*4C + 4C*C: 12C^2 weights per block
    per_block = 12 * C * C + (13 * C if bias else 2 * C)  # biases 3C+C+4C+C, LayerNorms 4C or 2C
    final_ln = 2 * C if bias else C
    expected = V * C + T * C + L * per_block + final_ln + (0 if tie else V * C)
    assert build(bias=bias, tie_embeddings=tie).num_parameters() == expected


def test_tied_embeddings_share_storage():
    tied = build()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.transformer.wte.weight.data_ptr()
    untied = build(tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()


def test_residual_projections_get_a_smaller_init():
    model = build(n_layer=8, n_embd=64, n_head=4)
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert proj == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert fc == pytest.approx(0.02, rel=0.1)


def test_flops_per_token_formula():
    L, C, T, V = 2, 8, 16, VOCAB
    non_embedding = L * (12 * C * C + 13 * C) + 2 * C
    assert build().flops_per_token() == 2 * non_embedding + 2 * V * C + 2 * L * T * C


def test_training_lowers_the_loss():
    model = build(n_embd=16)
    losses = fit_repeated_pattern(model, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]


def test_kv_cache_matches_full_recompute():
    model = build(dropout=0.1).eval()
    seq = torch.randint(0, VOCAB, (2, 12))
    full = model(seq)  # (2, 12, V)
    logits, state = model.generate_step(seq[:, :5], None)
    assert isinstance(state, KVCache) and state.pos == 5
    assert len(state.layers) == 2 and state.layers[0][0].shape == (2, 2, 5, 4)
    torch.testing.assert_close(logits, full[:, 4], atol=1e-5, rtol=1e-5)
    # one token at a time, then several at once
    for t in range(5, 9):
        logits, state = model.generate_step(seq[:, t:t + 1], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)
    logits, state = model.generate_step(seq[:, 9:12], state)
    assert state.pos == 12
    torch.testing.assert_close(logits, full[:, 11], atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_recompute():
    model = build().eval()
    prompt = [3, 1, 4]
    cached = list(generate(model, prompt, max_new_tokens=10, temperature=0))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert cached == ids[len(prompt):]


def decode_step(model: GptModule, ids: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor, past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    graph = next(g for g in model.export_graphs() if g.name == "decode")
    with torch.no_grad():
        return graph.module(ids, positions, mask, *past)


def test_decode_graph_computes_generate_step_with_only_new_entries_out():
    model = build().eval()
    seq = torch.randint(0, VOCAB, (2, 9))
    empty = [torch.zeros(2, 2, 0, 4) for _ in range(4)]  # (B, n_head, past, head_dim) per k, v
    positions = torch.arange(6).expand(2, 6)
    logits, *present = decode_step(model, seq[:, :6], positions, torch.ones(2, 6, dtype=bool),
                                   empty)
    expected, state = model.generate_step(seq[:, :6], None)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert [p.shape for p in present] == [(2, 2, 6, 4)] * 4
    torch.testing.assert_close(present[0], state.layers[0][0])
    logits, *new = decode_step(model, seq[:, 6:9], torch.arange(6, 9).expand(2, 3),
                               torch.ones(2, 9, dtype=bool), present)
    expected, state = model.generate_step(seq[:, 6:9], state)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert new[1].shape == (2, 2, 3, 4)  # the new tokens' entries only
    torch.testing.assert_close(new[1], state.layers[0][1][:, :, 6:])


def test_decode_graph_rows_at_different_positions_match_each_alone():
    model = build().eval()
    long, short = torch.randint(0, VOCAB, (1, 7)), torch.randint(0, VOCAB, (1, 4))
    with torch.no_grad():
        _, long_state = model.generate_step(long[:, :6], None)
        _, short_state = model.generate_step(short[:, :3], None)
    # one batch: the short row's cache is left-padded with 3 unused (masked) entries
    past = [torch.cat([long_state.layers[i][kv], F.pad(short_state.layers[i][kv],
                                                      (0, 0, 3, 0), value=9.0)])
            for i in range(2) for kv in (0, 1)]
    mask = torch.ones(2, 7, dtype=bool)
    mask[1, :3] = False
    logits, *_ = decode_step(model, torch.cat([long[:, 6:], short[:, 3:]]),
                             torch.tensor([[6], [3]]), mask, past)
    with torch.no_grad():
        torch.testing.assert_close(logits[0], model(long)[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[1], model(short)[0, -1], atol=1e-5, rtol=1e-5)


def test_export_graphs_describe_the_cache():
    model = build()
    graphs = {g.name: g for g in model.export_graphs()}
    assert graphs["model"].max_sizes == {"sequence": 16}
    decode = graphs["decode"]
    assert [t.name for t in decode.inputs[:4]] == ["input_ids", "position_ids", "attention_mask",
                                                    "past_key_0"]
    assert decode.inputs[2].shape == ("batch", "past+step")
    assert decode.inputs[3].shape == ("batch", 2, "past", 4)
    assert decode.state.inputs == ("past_key_0", "past_value_0", "past_key_1", "past_value_1")
    assert decode.state.outputs[0] == "present_key_0" and decode.state.sequence_axis == 2
    assert [t.name for t in decode.outputs][1:] == list(decode.state.outputs)


def test_generate_step_refuses_to_pass_block_size():
    model = build().eval()
    _, state = model.generate_step(torch.randint(0, VOCAB, (1, 15)), None)
    _, state = model.generate_step(torch.tensor([[1]]), state)
    with pytest.raises(ValueError, match="16 cached \\+ 1 new"):
        model.generate_step(torch.tensor([[1]]), state)


def test_generation_past_block_size_crops():
    model = build(block_size=8).eval()
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # already longer than the block
    tokens = list(generate(model, prompt, max_new_tokens=20, temperature=0))
    assert len(tokens) == 20 and all(0 <= t < VOCAB for t in tokens)
    # The first token is predicted from the last block_size - 1 tokens of the prompt.
    with torch.no_grad():
        expected = int(model(torch.tensor([prompt[-7:]]))[0, -1].argmax())
    assert tokens[0] == expected


def test_kernels_backend_resolved_at_build():
    expected = ops.AUTO_FUSED if KERNELS_EXPECTED else "reference"
    assert build(kernels="auto").kernels_backend == expected
    assert build().kernels_backend == "reference"


@pytest.mark.skipif(ops.why_not_fused("attention") is not None, reason="fused attention not built")
def test_auto_takes_the_fused_kernel_only_where_it_serves(monkeypatch):
    from lmforge.ops import attention as attention_ops

    calls = []
    real = attention_ops.fused_attention
    monkeypatch.setattr(attention_ops, "fused_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build(dropout=0.1, kernels="auto")  # dropout in training is PyTorch's op's job
    idx = torch.randint(0, VOCAB, (2, 12))
    model.train()
    model(idx).sum().backward()
    assert calls == []
    model.eval()
    with torch.no_grad():
        evaluated = model(idx)
    assert len(calls) == model.settings.n_layer
    reference = build(dropout=0.1, kernels="reference").eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(evaluated, reference(idx), rtol=1e-5, atol=1e-5)
    calls.clear()
    with torch.no_grad():
        model.double()(idx)  # float64 is served too
        model.half()(idx)  # float16 is not: PyTorch's op
    assert len(calls) == model.settings.n_layer


def test_fused_kernels_fail_clearly_where_not_built(monkeypatch):
    monkeypatch.setattr(ops, "why_not_fused", lambda op: "not built")
    with pytest.raises(LmforgeError, match="the fused attention kernel is not built"):
        build(kernels="fused")


@pytest.mark.skipif(ops.why_not_fused("attention") is not None, reason="fused attention not built")
def test_fused_attention_matches_the_reference_model():
    reference = build(dropout=0.0).eval()
    fused = build(dropout=0.0, kernels="fused").eval()
    fused.load_state_dict(reference.state_dict())
    idx = torch.randint(0, VOCAB, (2, 12))
    torch.testing.assert_close(fused(idx), reference(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("settings, message", [
    (dict(n_embd=10, n_head=4), "divisible by n_head"),
    (dict(n_layer=0), "greater than or equal to 1"),
    (dict(dropout=1.0), "less than 1"),
    (dict(kernels="fast"), "'auto', 'fused' or 'reference'"),
    (dict(n_heads=4), "Extra inputs"),
])
def test_settings_validation(settings, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        Gpt.Settings(**settings)


def test_other_tasks_refused():
    with pytest.raises(LmforgeError, match="lm, classify; found task 'seq2seq'"):
        Gpt(Gpt.Settings(**TINY)).build(ModelSpec("seq2seq", VOCAB))
    with pytest.raises(LmforgeError, match="num_labels >= 2"):
        Gpt(Gpt.Settings(**TINY)).build(ModelSpec("classify", VOCAB))


def build_classifier(**overrides) -> GptClassifier:
    settings = Gpt.Settings(**{**TINY, "n_embd": 16, "block_size": 24, **overrides})
    spec = ModelSpec("classify", classify_checks.VOCAB, pad_id=0, num_labels=2)
    return Gpt(settings).build(spec)


@pytest.mark.parametrize("kernels", ["reference", pytest.param("fused", marks=pytest.mark.skipif(
    ops.why_not_fused("attention") is not None, reason="fused attention not built"))])
def test_classifier_learns_a_marker_token(kernels):
    assert classify_checks.held_out_accuracy(build_classifier(kernels=kernels), lr=3e-3) >= 0.9


def test_classifier_ignores_padding():
    classify_checks.assert_padding_invariant(build_classifier())


def test_classifier_keeps_the_lm_state_dict_keys_of_its_decoder():
    lm_keys = {k for k in build(n_embd=16, block_size=24).state_dict() if k != "lm_head.weight"}
    classifier_keys = set(build_classifier().state_dict())
    assert classifier_keys == lm_keys | {"head.weight", "head.bias"}


def test_classifier_flops_per_token_leave_out_the_lm_head():
    L, C, T = 2, 16, 24
    non_embedding = L * (12 * C * C + 13 * C) + 2 * C
    assert build_classifier().flops_per_token() == 2 * non_embedding + 2 * L * T * C
    assert build_classifier(n_embd=32).flops_per_token() > build_classifier().flops_per_token()


def test_classifier_exports_its_forward():
    model = build_classifier()
    (graph,) = model.export_graphs()
    assert graph.module is model and graph.max_sizes == {"sequence": 24}
    assert [t.name for t in graph.inputs] == ["input_ids", "pad_mask"]
    assert graph.outputs[0].shape == ("batch", 2)


def test_classifier_longer_than_block_size_refused():
    with pytest.raises(ValueError, match="block_size=24 tokens, found 25"):
        build_classifier()(torch.ones(1, 25, dtype=torch.long),
                           torch.zeros(1, 25, dtype=torch.bool))
