"""CPU attention timings: naive reference, PyTorch SDPA and the fused kernel, in one run."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from lmforge.ops import why_not_fused
from lmforge.ops.attention import fused_attention, reference_attention

ROUNDS = 5
FP32, BF16 = torch.float32, torch.bfloat16
# (B, H, Tq, Tk, D, causal, backward, dtype)
TRAINING = [
    (8, 4, 256, 256, 32, True, True),
    (4, 8, 512, 512, 64, True, True),
    (1, 12, 1024, 1024, 64, True, True),
    (32, 4, 128, 128, 32, False, True),
]
DECODING = [(b, 8, 1, tk, 64, True, False) for b in (1, 8) for tk in (128, 512, 1024)]
SHAPES = ([(*shape, FP32) for shape in TRAINING + DECODING]
          + [(*shape, BF16) for shape in TRAINING + DECODING[2::3]])


def sdpa(q, k, v, causal):
    # SDPA's is_causal aligns the mask top-left; with one query (decoding) every key is visible,
    # which is the bottom-right alignment lmforge uses, so no mask is needed there.
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] == k.shape[2])


def sdpa_fp32(q, k, v, causal):
    """SDPA on float32 copies of bf16 inputs: what bf16 has to beat to be worth it."""
    return sdpa(q.float(), k.float(), v.float(), causal)


VARIANTS = {
    "reference": lambda q, k, v, causal: reference_attention(q, k, v, causal),
    "torch": sdpa,
    "fused": lambda q, k, v, causal: fused_attention(q, k, v, causal=causal),
}
BF16_VARIANTS = {**VARIANTS, "torch_fp32": sdpa_fp32}


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


def check_correct(variants, q, k, v, causal, dtype, shape):
    """Every variant against the float64 reference of the same (rounded) inputs: within 1e-4 in
    fp32; in bf16, within twice the error of the reference run in bf16."""
    expected = reference_attention(q.double(), k.double(), v.double(), causal)
    with torch.no_grad():
        errors = {name: (fn(q, k, v, causal).double() - expected).abs().max().item()
                  for name, fn in variants.items()}
    tolerance = 1e-4 if dtype == FP32 else 2 * errors["reference"] + 1e-6
    for name, error in errors.items():
        assert error <= max(tolerance, 1e-4), (name, shape, error)


def measure(shape):
    b, h, tq, tk, d, causal, backward, dtype = shape
    variants = VARIANTS if dtype == FP32 else BF16_VARIANTS
    q, k, v = (torch.randn(b, h, t, d, dtype=dtype, requires_grad=backward)
               for t in (tq, tk, tk))
    grad = torch.randn(b, h, tq, d, dtype=dtype)
    check_correct(variants, q, k, v, causal, dtype, shape)
    times = {name: [] for name in variants}
    repeats = 5 if backward else 100
    for _ in range(ROUNDS):  # interleaved, so machine noise hits all variants alike
        for name, fn in variants.items():
            times[name] += [time_once(fn, q, k, v, causal, backward, grad) for _ in range(repeats)]
    # The median of single calls: a call preempted by another process on the shared cores is an
    # outlier here, where it would inflate a whole round's mean.
    return {name: statistics.median(values) for name, values in times.items()}


@pytest.mark.skipif(why_not_fused("attention") is not None,
                    reason="the fused attention kernel is not built")
def test_attention_variants():
    torch.manual_seed(0)
    rows = [(shape, measure(shape), useful_flops(*shape[:7])) for shape in SHAPES]
    print(f"\nattention, {torch.get_num_threads()} threads, median single call over {ROUNDS} "
          f"interleaved rounds (ms, useful GFLOP/s, speed relative to torch in the same dtype):")
    for (b, h, tq, tk, d, causal, backward, dtype), medians, flops in rows:
        label = (f"{str(dtype)[6:]:>8} ({b},{h},{tq},{tk},{d}) {'causal' if causal else 'bidir'} "
                 f"{'fwd+bwd' if backward else 'fwd'}")
        cells = "  ".join(f"{name} {ms * 1e3:7.3f} ms {flops / ms / 1e9:6.1f} GF/s "
                          f"{medians['torch'] / ms:5.2f}x" for name, ms in medians.items())
        print(f"  {label:<47} {cells}")
    assert all(ms > 0 for _, medians, _ in rows for ms in medians.values())
