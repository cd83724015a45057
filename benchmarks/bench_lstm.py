"""LSTM speed: the fused lmforge::lstm op against nn.LSTM (oneDNN) and a Python reference loop."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lmforge.ops import lstm as lstm_ops
from lmforge.ops import why_not_fused

pytestmark = pytest.mark.skipif(why_not_fused("lstm") is not None,
                                reason="the fused lstm kernel is not built")

ROUNDS = 5
# (batch, time, input, hidden, layers, bidirectional), forward + backward.
TRAINING = [(32, 64, 128, 256, 1, False), (64, 128, 256, 512, 2, False),
            (64, 64, 128, 128, 1, True)]
# Generation: batch 1, one step at a time, carrying (h, c).
GENERATION = (1, 256, 128, 512, 2)
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def layers_of(module: nn.LSTM) -> list[lstm_ops.LstmWeights]:
    suffixes = ("", "_reverse") if module.bidirectional else ("",)
    return [tuple(getattr(module, f"{name}_l{k}{sfx}") for name in NAMES)
            for k in range(module.num_layers) for sfx in suffixes]


def lstm_flops(T: int, B: int, In: int, H: int, layers: int, directions: int = 1) -> int:
    """Forward multiply-adds of the gate matmuls, 2 FLOPs each (gates and biases left out)."""
    return directions * sum(2 * 4 * H * ((In if k == 0 else directions * H) + H)
                            for k in range(layers)) * B * T


def reference_stack(x, state, layers, bidirectional=False):
    """The Python reference loop, layer by layer, from `state` ((L * D, B, H) each, or zeros)."""
    D = 2 if bidirectional else 1
    H = layers[0][1].shape[1]
    h0, c0 = state if state is not None else (x.new_zeros(len(layers), x.shape[0], H),) * 2
    h_n, c_n = [], []
    for layer in range(len(layers) // D):
        outputs = []
        for direction in range(D):
            k = layer * D + direction
            out, (h, c) = lstm_ops.reference_lstm(x, h0[k], c0[k], *layers[k],
                                                 reverse=direction == 1)
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outputs, dim=-1)
    return x, (torch.stack(h_n), torch.stack(c_n))


def timed(variants: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds of each variant, rounds interleaved so machine noise hits all alike."""
    for run in variants.values():  # warm-up: first-call allocations and thread pools
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], flops: float, load: tuple[float, ...]) -> None:
    print(f"\n{title}, {torch.get_num_threads()} threads, medians of {ROUNDS} rounds, "
          f"load average {load[0]:.2f} before / {os.getloadavg()[0]:.2f} after:")
    print(f"  {'variant':<10} {'ms':>9} {'GFLOP/s':>8} {'speed vs torch':>15}")
    for name, seconds in medians.items():
        print(f"  {name:<10} {seconds * 1e3:>9.2f} {flops / seconds / 1e9:>8.1f} "
              f"{medians['torch'] / seconds:>14.2f}x")


def assert_close_all(got, want, rtol):
    for g, w in zip(got, want, strict=True):
        assert ((g.float() - w).norm() / w.norm()).item() <= rtol


@pytest.mark.parametrize("B, T, In, H, L, bidirectional", TRAINING)
def test_forward_backward(B, T, In, H, L, bidirectional):
    """fp32 variants, and bf16 ones (fp32 cell state and accumulation), all against fp32 torch."""
    torch.manual_seed(0)
    module = nn.LSTM(In, H, num_layers=L, batch_first=True, bidirectional=bidirectional)
    module_bf16 = nn.LSTM(In, H, num_layers=L, batch_first=True, bidirectional=bidirectional)
    module_bf16.load_state_dict(module.state_dict())
    module_bf16.bfloat16()
    D = 2 if bidirectional else 1
    x = torch.randn(B, T, In, requires_grad=True)
    x_bf16 = x.detach().bfloat16().requires_grad_()
    probe = torch.randn(B, T, D * H)

    def step(forward, inputs, params):
        def run():
            out = forward()
            grads = torch.autograd.grad(out, [inputs, *params], probe.to(out.dtype))
            return out, grads
        return run

    params, params_bf16 = list(module.parameters()), list(module_bf16.parameters())
    variants = {
        "reference": step(lambda: reference_stack(x, None, layers_of(module), bidirectional)[0],
                          x, params),
        "torch": step(lambda: module(x)[0], x, params),
        "fused": step(lambda: lstm_ops.fused_lstm(x, None, layers_of(module),
                                                  bidirectional=bidirectional)[0], x, params),
        "torch_bf16": step(lambda: module_bf16(x_bf16)[0], x_bf16, params_bf16),
        "fused_bf16": step(lambda: lstm_ops.fused_lstm(x_bf16, None, layers_of(module_bf16),
                                                       bidirectional=bidirectional)[0],
                           x_bf16, params_bf16),
    }
    want_out, want_grads = variants["torch"]()
    for name in variants:
        out, grads = variants[name]()
        assert_close_all((out, *grads), (want_out, *want_grads),
                         rtol=5e-2 if name.endswith("bf16") else 1e-4)
    load = os.getloadavg()
    medians = timed(variants)
    report(f"forward+backward (B{B}, T{T}, In{In}, H{H}) {L} layer(s), "
           f"{'bidirectional' if bidirectional else 'one direction'}", medians,
           3 * lstm_flops(T, B, In, H, L, D), load)
    assert all(seconds > 0 for seconds in medians.values())


@torch.no_grad()
def test_generation_step_by_step():
    B, steps, In, H, L = GENERATION
    torch.manual_seed(0)
    module = nn.LSTM(In, H, num_layers=L, batch_first=True)
    layers = layers_of(module)
    x = torch.randn(B, steps, In)

    def reference():
        state, outs = None, []
        for t in range(steps):
            out, state = reference_stack(x[:, t:t + 1], state, layers)
            outs.append(out[:, 0])
        return torch.stack(outs, 1)

    def torch_lstm():
        state, outs = None, []
        for t in range(steps):
            out, state = module(x[:, t:t + 1], state)
            outs.append(out[:, 0])
        return torch.stack(outs, 1)

    def fused():
        state, outs = None, []
        for t in range(steps):
            h, state = lstm_ops.fused_lstm_step(x[:, t], state, layers)
            outs.append(h)
        return torch.stack(outs, 1)

    variants = {"reference": reference, "torch": torch_lstm, "fused": fused}
    want = module(x)[0]
    for run in variants.values():
        assert_close_all((run(),), (want,), rtol=1e-5)
    load = os.getloadavg()
    medians = timed(variants)
    report(f"generation fp32, batch {B}, In{In}, H{H}, {L} layers, {steps} steps one at a time",
           medians, lstm_flops(steps, B, In, H, L), load)
    assert all(seconds > 0 for seconds in medians.values())
