"""CPU attention timings: naive reference, PyTorch SDPA and the fused kernel, in one run."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from lmforge.attention_op import AVAILABLE, fused_attention, reference_attention

ROUNDS = 5
# (B, H, Tq, Tk, D, causal, backward)
SHAPES = [
    (8, 4, 256, 256, 32, True, True),
    (4, 8, 512, 512, 64, True, True),
    (1, 12, 1024, 1024, 64, True, True),
    (32, 4, 128, 128, 32, False, True),
    *[(b, 8, 1, tk, 64, True, False) for b in (1, 8) for tk in (128, 512, 1024)],
]


def sdpa(q, k, v, causal):
    # SDPA's is_causal aligns the mask top-left; with one query (decoding) every key is visible,
    # which is the bottom-right alignment lmforge uses, so no mask is needed there.
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] == k.shape[2])


VARIANTS = {
    "reference": lambda q, k, v, causal: reference_attention(q, k, v, causal),
    "torch": sdpa,
    "fused": lambda q, k, v, causal: fused_attention(q, k, v, causal=causal),
}


def useful_flops(b, h, tq, tk, d, causal, backward):
    """Two matmuls of 2 Tq Tk D flops over the visible (query, key) pairs; the backward counts
    2.5x the forward, as flash-attention's benchmarks do."""
    pairs = sum(min(tk, tk - tq + i + 1) for i in range(tq)) if causal else tq * tk
    forward = 4 * b * h * pairs * d
    return forward * (3.5 if backward else 1.0)


def time_once(fn, q, k, v, causal, backward, grad):
    start = time.perf_counter()
    if backward:
        fn(q, k, v, causal).backward(grad)
    else:
        with torch.no_grad():
            fn(q, k, v, causal)
    return time.perf_counter() - start


@pytest.mark.skipif(not AVAILABLE, reason="lmforge._C is not built with the fused attention op")
def test_attention_variants():
    torch.manual_seed(0)
    rows = []
    for shape in SHAPES:
        b, h, tq, tk, d, causal, backward = shape
        q, k, v = (torch.randn(b, h, t, d, requires_grad=backward) for t in (tq, tk, tk))
        grad = torch.randn(b, h, tq, d)
        # Correctness before timing: every variant against the float64 reference.
        expected = reference_attention(q.double(), k.double(), v.double(), causal)
        for name, fn in VARIANTS.items():
            with torch.no_grad():
                error = (fn(q, k, v, causal).double() - expected).abs().max().item()
            assert error < 1e-4, (name, shape, error)
        times = {name: [] for name in VARIANTS}
        repeats = 5 if backward else 100
        for _ in range(ROUNDS):  # interleaved, so machine noise hits all variants alike
            for name, fn in VARIANTS.items():
                elapsed = sum(time_once(fn, q, k, v, causal, backward, grad)
                              for _ in range(repeats))
                times[name].append(elapsed / repeats)
        medians = {name: statistics.median(values) for name, values in times.items()}
        rows.append((shape, medians, useful_flops(*shape)))
    print(f"\nattention, fp32, {torch.get_num_threads()} threads, medians of {ROUNDS} interleaved "
          f"rounds (ms, useful GFLOP/s, speed relative to torch):")
    for (b, h, tq, tk, d, causal, backward), medians, flops in rows:
        label = (f"({b},{h},{tq},{tk},{d}) {'causal' if causal else 'bidir'} "
                 f"{'fwd+bwd' if backward else 'fwd'}")
        cells = "  ".join(f"{name} {ms * 1e3:7.3f} ms {flops / ms / 1e9:6.1f} GF/s "
                          f"{medians['torch'] / ms:5.2f}x" for name, ms in medians.items())
        print(f"  {label:<38} {cells}")
    assert all(ms > 0 for _, medians, _ in rows for ms in medians.values())
