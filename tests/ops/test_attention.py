"""The fused CPU attention op against its float64 PyTorch reference, plus opcheck and compile."""

import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.ops import why_not_fused
from lmforge.ops.attention import attention, fused_attention, reference_attention

if why_not_fused("attention") is not None:
    pytest.skip(f"the fused attention kernel is {why_not_fused('attention')}",
                allow_module_level=True)

# The fp32 kernel against a float64 reference, as max |error| / max |reference|, the denominator
# floored at 1 (the inputs' scale) because some gradients are exactly 0 (dq with a single key).
FORWARD_RTOL = 1e-5
GRAD_RTOL = 1e-4


def make_inputs(b, h, tq, tk, d, padded, seed=0):
    """float64 q, k, v and (optionally) a padding mask where batch 0 pads its last third and, when
    b > 1, batch 1 pads every key (rows that must come out as zeros)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=gen, dtype=torch.float64) for t in (tq, tk, tk))
    mask = None
    if padded:
        mask = torch.zeros(b, tk, dtype=torch.bool)
        mask[0, tk - tk // 3:] = True
        if b > 1:
            mask[1] = True
    return q, k, v, mask


def rel_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1.0)).item()


def check_against_reference(b, h, tq, tk, d, causal, padded):
    q, k, v, mask = make_inputs(b, h, tq, tk, d, padded)
    ref_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = reference_attention(*ref_inputs, causal, None, mask)
    grad_out = torch.randn_like(expected)
    expected.backward(grad_out)

    inputs = [t.float().requires_grad_() for t in (q, k, v)]
    out = fused_attention(*inputs, causal=causal, key_padding_mask=mask)
    out.backward(grad_out.float())
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert rel_error(out, expected) <= FORWARD_RTOL
    for name, got, want in zip("qkv", inputs, ref_inputs, strict=True):
        assert torch.isfinite(got.grad).all(), name
        assert rel_error(got.grad, want.grad) <= GRAD_RTOL, name


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("b, h, t, d", [(1, 1, 1, 24), (2, 3, 97, 59), (2, 2, 97, 96),
                                        (1, 2, 300, 24)])
def test_matches_reference(b, h, t, d, causal, padded):
    check_against_reference(b, h, t, t, d, causal, padded)


def test_long_sequence():
    check_against_reference(1, 1, 1025, 1025, 24, causal=True, padded=False)


# Tq < Tk: decoding against a KV cache; Tq > Tk: the first queries see no key and give zeros.
@pytest.mark.parametrize("tq, tk", [(1, 37), (5, 37), (1, 300), (9, 5)])
@pytest.mark.parametrize("padded", [False, True])
def test_query_and_key_lengths_differ(tq, tk, padded):
    check_against_reference(2, 3, tq, tk, 64, causal=True, padded=padded)


def test_fully_padded_rows_are_zero_with_finite_lse():
    q, k, v, mask = make_inputs(2, 2, 9, 9, 8, padded=True)
    out, lse = torch.ops.lmforge.attention(q, k, v, False, 0.5, mask)
    assert (out[1] == 0).all()
    assert torch.isfinite(lse).all()


# tq 1 takes the decoding kernel, whose key chunks (256 keys) split 600 keys into three.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tq, tk", [(97, 97), (1, 600)])
def test_outputs_fully_written(dtype, tq, tk):
    # The kernel allocates its outputs: fill freed memory of the same size with NaN first, so a
    # row the kernel forgot to write would most likely show up as NaN.
    q, k, v, mask = make_inputs(2, 3, tq, tk, 59, padded=True)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    for _ in range(3):
        poison = torch.full_like(q, math.nan)
        del poison
        out, lse = torch.ops.lmforge.attention(q, k, v, True, 0.1, mask)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        poison = torch.full_like(k, math.nan)
        del poison
        grads = torch.ops.lmforge.attention_backward(torch.ones_like(out), q, k, v, out, lse, True,
                                                     0.1, mask)
        assert all(torch.isfinite(g).all() for g in grads)


def test_strided_inputs_and_expanded_grad():
    # q, k, v as the model makes them: (B, T, H, D) transposed; sum() gives a stride-0 grad.
    x = torch.randn(2, 97, 3, 3, 24, dtype=torch.float64)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    reference_attention(*ref, True).sum().backward()
    inputs = [t.float().requires_grad_() for t in (q, k, v)]
    out = fused_attention(*inputs, causal=True)
    out.sum().backward()
    assert rel_error(out, reference_attention(q, k, v, True)) <= FORWARD_RTOL
    for got, want in zip(inputs, ref, strict=True):
        assert rel_error(got.grad, want.grad) <= GRAD_RTOL


# Decoding: tk 1025 spans five key chunks; B8 H8 with 1024 keys is enough work to run on every
# thread; Dv differs from D and neither is a multiple of a vector.
@pytest.mark.parametrize("b, tk, d, dv", [(1, 1025, 64, 64), (8, 1024, 64, 64), (3, 7, 59, 13)])
def test_decode_matches_reference(b, tk, d, dv):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(b, 8, 1, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, 8, tk, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, 8, tk, dv, generator=gen, dtype=torch.float64)
    expected = reference_attention(q, k, v, True)
    with torch.no_grad():
        out = fused_attention(q.float(), k.float(), v.float(), causal=True)
    assert rel_error(out, expected) <= FORWARD_RTOL


def test_decode_with_fully_padded_key_chunks():
    # Batch 0 pads its first 300 keys (all of chunk one), batch 1 all but key 450: the chunks with
    # no visible key must drop out of the log-sum-exp merge.
    q, k, v, _ = make_inputs(2, 2, 1, 600, 16, padded=False)
    mask = torch.zeros(2, 600, dtype=torch.bool)
    mask[0, :300] = True
    mask[1] = True
    mask[1, 450] = False
    out, lse = torch.ops.lmforge.attention(q.float(), k.float(), v.float(), True, 0.25, mask)
    expected = reference_attention(q, k, v, True, 0.25, mask)
    assert rel_error(out, expected) <= FORWARD_RTOL
    torch.testing.assert_close(out[1].double(), v[1, :, 450:451], rtol=1e-6, atol=1e-6)
    expected_lse = ((q @ k.transpose(-2, -1)) * 0.25).masked_fill(mask[:, None, None], -math.inf)
    torch.testing.assert_close(lse.double(), expected_lse.logsumexp(-1), rtol=1e-5, atol=1e-5)


def bf16_errors(b, h, tq, tk, d, causal, padded):
    """Max |error| against the float64 reference of the fused kernel and of the reference run in
    bf16, for the output and the three gradients (flash-attention's bf16 test criterion)."""
    q, k, v, mask = make_inputs(b, h, tq, tk, d, padded)
    ref_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = reference_attention(*ref_inputs, causal, None, mask)
    # seeded: a max error over random gradients varies from draw to draw
    grad_out = torch.randn(expected.shape, dtype=expected.dtype,
                           generator=torch.Generator().manual_seed(1))
    expected.backward(grad_out)
    variants = {
        "fused": lambda *t: fused_attention(*t, causal=causal, key_padding_mask=mask),
        "bf16 reference": lambda *t: reference_attention(*t, causal, None, mask),
    }
    results = {}
    for name, fn in variants.items():
        inputs = [t.bfloat16().requires_grad_() for t in (q, k, v)]
        out = fn(*inputs)
        out.backward(grad_out.bfloat16())
        assert out.dtype == torch.bfloat16 and all(t.grad.dtype == torch.bfloat16 for t in inputs)
        results[name] = [(got.double() - want).abs().max().item() for got, want in
                         zip([out, *(t.grad for t in inputs)],
                             [expected, *(t.grad for t in ref_inputs)], strict=True)]
    return results["fused"], results["bf16 reference"]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("b, h, tq, tk, d", [(2, 3, 97, 97, 59), (1, 2, 300, 300, 64),
                                             (2, 2, 5, 37, 96), (2, 3, 1, 300, 64)])
def test_bf16_within_twice_the_bf16_reference_error(b, h, tq, tk, d, causal, padded):
    fused, reference = bf16_errors(b, h, tq, tk, d, causal, padded)
    for name, got, bound in zip(["out", "dq", "dk", "dv"], fused, reference, strict=True):
        # The floor covers outputs the bf16 reference gets exactly right (a single visible key).
        assert got <= 2 * bound + 1e-6, (name, got, bound)


def test_bf16_lse_is_float32():
    q, k, v, mask = make_inputs(2, 2, 9, 9, 8, padded=True)
    out, lse = torch.ops.lmforge.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), True, 0.3,
                                           mask)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    _, expected = torch.ops.lmforge.attention(q, k, v, True, 0.3, mask)
    torch.testing.assert_close(lse.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("causal, tq, tk, padded", [(True, 7, 7, True), (False, 6, 11, True),
                                                     (True, 3, 9, False)])
def test_gradcheck_float64(causal, tq, tk, padded):
    q, k, v, mask = make_inputs(2, 2, tq, tk, 5, padded)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda *t: fused_attention(*t, causal=causal, key_padding_mask=mask), inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    for causal, padded, tq, tk in [(True, True, 7, 7), (False, False, 5, 9), (True, False, 1, 9)]:
        q, k, v, mask = make_inputs(2, 2, tq, tk, 8, padded)
        q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
        torch.library.opcheck(torch.ops.lmforge.attention.default, (q, k, v, causal, 0.3, mask))
        out, lse = torch.ops.lmforge.attention(q, k, v, causal, 0.3, mask)
        args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(),
                lse.detach(), causal, 0.3, mask)
        torch.library.opcheck(torch.ops.lmforge.attention_backward.default, args)


def test_compile_fullgraph():
    q, k, v, mask = make_inputs(2, 2, 33, 33, 16, padded=True)
    q, k, v = (t.float().requires_grad_() for t in (q, k, v))
    fn = torch.compile(lambda q, k, v: fused_attention(q, k, v, causal=True,
                                                       key_padding_mask=mask).sum(),
                       fullgraph=True, backend="aot_eager")
    fn(q, k, v).backward()
    expected = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    fused_attention(*expected, causal=True, key_padding_mask=mask).sum().backward()
    for got, want in zip((q, k, v), expected, strict=True):
        torch.testing.assert_close(got.grad, want.grad)


def test_attention_fused_matches_reference_path():
    q, k, v, _ = make_inputs(2, 4, 50, 50, 32, padded=False)
    q, k, v = q.float(), k.float(), v.float()
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, 40:] = True
    for causal, key_mask in [(True, None), (False, mask), (True, mask)]:
        fused = attention(q, k, v, causal=causal, key_padding_mask=key_mask, backend="fused")
        reference = attention(q, k, v, causal=causal, key_padding_mask=key_mask,
                              backend="reference")
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    decode = attention(q[:, :, -1:], k, v, causal=True, backend="fused")
    torch.testing.assert_close(decode, attention(q[:, :, -1:], k, v, causal=True),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(LmforgeError, match="no dropout"):
        attention(q, k, v, causal=True, dropout_p=0.1, backend="fused")
