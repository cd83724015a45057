"""Tests of the fused lmforge::lstm op against the PyTorch reference, nn.LSTM and the lstm model."""

import pytest
import torch
from torch import nn

from lmforge.interfaces.model import ModelSpec
from lmforge.ops import lstm as lstm_ops
from lmforge.ops import why_not_fused

if why_not_fused("lstm") is not None:
    pytest.skip(f"the fused lstm kernel is {why_not_fused('lstm')} (pip install -e . builds it)",
                allow_module_level=True)

from lmforge.plugins.models.lstm import Lstm  # noqa: E402  (after the skip: the plugin needs the op)

NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


@pytest.fixture(autouse=True)
def _seed(monkeypatch):
    monkeypatch.delenv("LMFORGE_KERNELS", raising=False)
    torch.manual_seed(0)


def make_inputs(B, T, In, H, dtype=torch.float64):
    """x, h0, c0 and nn.LSTM-like weights (U(-1/sqrt(H), 1/sqrt(H)), biases a little larger)."""
    bound = H ** -0.5
    return [torch.randn(B, T, In, dtype=dtype), torch.randn(B, H, dtype=dtype),
            torch.randn(B, H, dtype=dtype),
            torch.empty(4 * H, In, dtype=dtype).uniform_(-bound, bound),
            torch.empty(4 * H, H, dtype=dtype).uniform_(-bound, bound),
            torch.empty(4 * H, dtype=dtype).uniform_(-0.5, 0.5),
            torch.empty(4 * H, dtype=dtype).uniform_(-0.5, 0.5)]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def layers_of(module: nn.LSTM, state=None):
    """nn.LSTM's per-layer, per-direction weights, from the module or a state dict of it."""
    source = state if state is not None else dict(module.named_parameters())
    suffixes = ("", "_reverse") if module.bidirectional else ("",)
    return [tuple(source[f"{name}_l{k}{sfx}"] for name in NAMES)
            for k in range(module.num_layers) for sfx in suffixes]


def run_with_grads(fn, inputs, probes):
    """fn's (output, h_n, c_n) and the gradients of a random projection of them to all inputs."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out, h_n, c_n = fn(*inputs)
    loss = sum((o * p.to(o.dtype)).sum() for o, p in zip((out, h_n, c_n), probes, strict=True))
    return (out, h_n, c_n), torch.autograd.grad(loss, inputs)


def fused(x, h0, c0, *w, reverse=False):
    out, h_n, c_n, _, _ = torch.ops.lmforge.lstm(x, h0, c0, *w, reverse)
    return out, h_n, c_n


def reference(x, h0, c0, *w, reverse=False):
    out, (h_n, c_n) = lstm_ops.reference_lstm(x, h0, c0, *w, reverse=reverse)
    return out, h_n, c_n


@pytest.mark.parametrize("B, T, In, H, reverse", [
    (2, 5, 7, 100, False),  # hidden 100: not a multiple of the vector width
    (1, 97, 3, 16, True),   # batch 1, a long odd sequence, the backward direction
    (3, 1, 5, 100, False),  # a single step
    (4, 6, 8, 300, True),   # more than one column block of the gate pass
])
def test_fp32_kernel_matches_float64_reference(B, T, In, H, reverse):
    inputs = make_inputs(B, T, In, H)
    probes = [torch.randn(B, T, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
              torch.randn(B, H, dtype=torch.float64)]
    want, want_grads = run_with_grads(lambda *a: reference(*a, reverse=reverse), inputs, probes)
    got, got_grads = run_with_grads(lambda *a: fused(*a, reverse=reverse),
                                    [t.float() for t in inputs], probes)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and rel_err(g, w) <= 1e-5
    for name, g, w in zip(("x", "h0", "c0", *NAMES), got_grads, want_grads, strict=True):
        assert rel_err(g, w) <= 1e-4, name


@pytest.mark.parametrize("B, T, In, H, reverse", [
    (2, 5, 7, 100, False),  # hidden 100
    (1, 33, 3, 16, True),   # batch 1, the backward direction
    (4, 6, 8, 300, True),   # more than one column slice per thread
])
def test_bf16_error_at_most_twice_the_bf16_reference(B, T, In, H, reverse):
    """bf16 in and out, fp32 cell state and accumulation: against float64, at most twice the
    error of the reference loop run in bf16, for the outputs and every gradient."""
    inputs = make_inputs(B, T, In, H)
    probes = [torch.randn(B, T, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
              torch.randn(B, H, dtype=torch.float64)]
    want, want_grads = run_with_grads(lambda *a: reference(*a, reverse=reverse), inputs, probes)
    bf16 = [t.bfloat16() for t in inputs]
    base, base_grads = run_with_grads(lambda *a: reference(*a, reverse=reverse), bf16, probes)
    got, got_grads = run_with_grads(lambda *a: fused(*a, reverse=reverse), bf16, probes)
    for name, g, b, w in zip(("output", "h_n", "c_n"), got, base, want, strict=True):
        assert g.dtype == torch.bfloat16 and rel_err(g, w) <= 2 * rel_err(b, w), name
    for name, g, b, w in zip(("x", "h0", "c0", *NAMES), got_grads, base_grads, want_grads,
                             strict=True):
        assert g.dtype == torch.bfloat16 and rel_err(g, w) <= 2 * rel_err(b, w), name


@pytest.mark.parametrize("threads", [1, 3])
def test_any_thread_count_splits_the_columns_correctly(threads):
    """A step splits the hidden columns over the threads: 3 threads on H = 37 make slices of
    16, 16 and 5 columns."""
    B, T, In, H = 3, 7, 5, 37
    inputs = make_inputs(B, T, In, H)
    probes = [torch.randn(B, T, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
              torch.randn(B, H, dtype=torch.float64)]
    want, want_grads = run_with_grads(reference, inputs, probes)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got, got_grads = run_with_grads(fused, [t.float() for t in inputs], probes)
    finally:
        torch.set_num_threads(before)
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) <= 1e-5
    for name, g, w in zip(("x", "h0", "c0", *NAMES), got_grads, want_grads, strict=True):
        assert rel_err(g, w) <= 1e-4, name


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(reverse):
    inputs = [t.requires_grad_() for t in make_inputs(2, 4, 3, 5)]
    assert torch.autograd.gradcheck(lambda *a: fused(*a, reverse=reverse), inputs)
    step_inputs = [inputs[0][:, 0].detach().requires_grad_(), *inputs[1:]]
    assert torch.autograd.gradcheck(torch.ops.lmforge.lstm_step, step_inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x, h0, c0, *w = [t.to(dtype).requires_grad_() for t in make_inputs(3, 5, 4, 20)]
    torch.library.opcheck(torch.ops.lmforge.lstm.default, (x, h0, c0, *w, True))
    torch.library.opcheck(torch.ops.lmforge.lstm_step.default, (x[:, 0].detach(), h0, c0, *w))


def test_torch_compile_fullgraph():
    inputs = [t.float() for t in make_inputs(2, 7, 4, 24)]
    probes = [torch.randn(2, 7, 24), torch.randn(2, 24), torch.randn(2, 24)]
    compiled = torch.compile(fused, fullgraph=True)
    want, want_grads = run_with_grads(fused, inputs, probes)
    got, got_grads = run_with_grads(compiled, inputs, probes)
    for g, w in zip((*got, *got_grads), (*want, *want_grads), strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_fully_written(dtype):
    B, T, In, H = 3, 9, 5, 37
    x, h0, c0, *w = [t.to(dtype) for t in make_inputs(B, T, In, H)]
    acc = lstm_ops.accumulation_dtype(dtype)
    shapes = (((B, T, H), dtype), ((B, H), dtype), ((B, T, 4 * H), acc), ((B, T, H), acc))
    results = []
    for _ in range(2):
        # Freed NaN blocks of the outputs' sizes are what the allocator hands out next.
        poison = [torch.full(shape, float("nan"), dtype=dt) for shape, dt in shapes]
        del poison
        results.append(torch.ops.lmforge.lstm(x, h0, c0, *w))
    for first, second in zip(*results, strict=True):
        assert torch.isfinite(first).all() and torch.equal(first, second)
    out, _, c_n, gates, cells = results[0]
    assert gates.shape == (B, T, 4 * H) and gates.min() >= -1 and gates.max() <= 1
    assert gates.dtype == cells.dtype == acc and out.dtype == c_n.dtype == dtype
    torch.testing.assert_close(cells[:, -1].to(dtype), c_n)
    want = reference(*(t.float() for t in (x, h0, c0, *w)))[0]
    tolerance = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(out.float(), want, **tolerance)


def test_shape_errors_are_clear():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = [t.float() for t in make_inputs(2, 3, 4, 5)]
    with pytest.raises(RuntimeError, match=r"w_ih must be \(4H, In\) = \(20, 4\)"):
        torch.ops.lmforge.lstm(x, h0, c0, w_ih[:, :3], w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="h0 and c0 must be"):
        torch.ops.lmforge.lstm_step(x[:, 0], h0[:1], c0, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="float32, float64 or bfloat16"):
        torch.ops.lmforge.lstm(*(t.half() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_nn_lstm_state_dict_in_the_fused_path_matches_nn_lstm(bidirectional):
    module = nn.LSTM(6, 33, num_layers=3, batch_first=True, bidirectional=bidirectional)
    layers = layers_of(module, module.state_dict())
    x = torch.randn(4, 11, 6)
    state = (torch.randn(len(layers), 4, 33), torch.randn(len(layers), 4, 33))
    want, (want_h, want_c) = module(x, state)
    got, (got_h, got_c) = lstm_ops.fused_lstm(x, state, layers, bidirectional=bidirectional)
    for g, w in ((got, want), (got_h, want_h), (got_c, want_c)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    zero_state, _ = module(x)
    torch.testing.assert_close(lstm_ops.fused_lstm(x, None, layers, bidirectional=bidirectional)[0],
                               zero_state, rtol=1e-5, atol=1e-6)


def test_dropout_between_layers_only_in_training():
    module = nn.LSTM(5, 8, num_layers=2, batch_first=True, dropout=0.5)
    x = torch.randn(2, 4, 5)
    layers = layers_of(module)
    eval_out = lstm_ops.fused_lstm(x, None, layers, dropout=0.5, training=False)[0]
    torch.testing.assert_close(eval_out, module.eval()(x)[0], rtol=1e-5, atol=1e-6)
    train_out = lstm_ops.fused_lstm(x, None, layers, dropout=0.5, training=True)[0]
    assert not torch.allclose(train_out, eval_out)


def test_step_function_equals_the_sequence_op():
    module = nn.LSTM(7, 50, num_layers=2, batch_first=True)
    layers = layers_of(module)
    x = torch.randn(3, 6, 7)
    with torch.no_grad():
        want, (want_h, want_c) = lstm_ops.fused_lstm(x, None, layers)
        state = None
        for t in range(x.shape[1]):
            h, state = lstm_ops.fused_lstm_step(x[:, t], state, layers)
            torch.testing.assert_close(h, want[:, t], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state[0], want_h, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state[1], want_c, rtol=1e-6, atol=1e-6)


def build_model(kernels, **settings):
    torch.manual_seed(0)
    settings = {"n_embd": 12, "hidden_size": 40, "n_layer": 2, "kernels": kernels, **settings}
    return Lstm(Lstm.Settings(**settings)).build(ModelSpec("lm", 13))


def test_model_fused_matches_reference_and_trains():
    fused_model, reference_model = build_model("fused"), build_model("reference")
    assert fused_model.kernels_backend == "fused"
    reference_model.load_state_dict(fused_model.state_dict())
    idx = torch.randint(0, 13, (3, 17))
    torch.testing.assert_close(fused_model(idx), reference_model(idx), rtol=1e-5, atol=1e-5)
    for model in (fused_model, reference_model):
        model(idx).logsumexp(-1).sum().backward()
    pairs = zip(fused_model.named_parameters(), reference_model.parameters(), strict=True)
    for (name, p), q in pairs:
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)

    with torch.no_grad():
        state_f = state_r = None
        for chunk in (idx[:, :5], idx[:, 5:6], idx[:, 6:7]):  # a prompt, then single steps
            logits_f, state_f = fused_model.generate_step(chunk, state_f)
            logits_r, state_r = reference_model.generate_step(chunk, state_r)
            torch.testing.assert_close(logits_f, logits_r, rtol=1e-5, atol=1e-5)

    optimizer = torch.optim.Adam(fused_model.parameters(), lr=1e-2)
    pattern = torch.arange(13).repeat(4, 3)  # (4, 39): a sequence to memorize
    losses = []
    for _ in range(30):
        logits = fused_model(pattern[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 13), pattern[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
