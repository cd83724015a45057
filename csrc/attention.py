"""Attention: the fused CPU kernel (attention*.cpp) with its fake registration, the PyTorch
reference, and `attention`, which runs the backend a model resolved."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.ops import AUTO_FUSED, why_not_fused


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                        scale: float | None = None,
                        key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention as matmul, mask, softmax, matmul, in the inputs' dtype (float64 works).

    q: (B, H, Tq, D); k: (B, H, Tk, D); v: (B, H, Tk, Dv); key_padding_mask: (B, Tk) bool, True
    where a key is padding. With `causal`, query i sees keys up to Tk - Tq + i. Rows with every
    key masked give zeros. Returns (B, H, Tq, Dv).
    """
    tq, tk = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale                       # (B, H, Tq, Tk)
    allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(tk - tq)
    allowed = allowed.expand(q.shape[0], 1, tq, tk)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    probs = scores.masked_fill(~allowed, -math.inf).softmax(dim=-1)
    probs = probs.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)  # softmax of all -inf: NaN
    return probs @ v


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                    scale: float | None = None,
                    key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention through the fused `lmforge::attention` kernel (float32, float64, bfloat16; CPU).

    q: (B, H, Tq, D); k: (B, H, Tk, D); v: (B, H, Tk, Dv); key_padding_mask: (B, Tk) bool, True
    where a key is padding; scale defaults to 1 / sqrt(D). With `causal`, query i sees keys up
    to Tk - Tq + i (decoding against a KV cache). bfloat16 inputs accumulate in float32.
    Returns (B, H, Tq, Dv), contiguous, in the inputs' dtype.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, _ = torch.ops.lmforge.attention(q, k, v, causal, scale, key_padding_mask)
    return out


# The autograd kernel is registered in C++ (csrc/attention.cpp): in Python it cost more per call
# than a decoding step's whole kernel.
def _register() -> None:
    @torch.library.register_fake("lmforge::attention")
    def _(q, k, v, causal, scale, key_padding_mask):
        b, h, tq, _ = q.shape
        # bf16 inputs keep their log-sum-exp in float32, as the kernel accumulates.
        lse_dtype = torch.float32 if q.dtype == torch.bfloat16 else q.dtype
        return q.new_empty(b, h, tq, v.shape[-1]), q.new_empty(b, h, tq, dtype=lse_dtype)

    @torch.library.register_fake("lmforge::attention_backward")
    def _(grad_out, q, k, v, out, lse, causal, scale, key_padding_mask):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# Registered at import, before any call: registering after the op ran broke opcheck's AOT test.
if why_not_fused("attention") is None:
    _register()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              key_padding_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
              backend: str = "reference") -> torch.Tensor:
    """Scaled dot-product attention.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D); key_padding_mask: (B, Tk) bool, True where a key is
    padding. With `causal` and Tq < Tk (decoding against a KV cache), query i sees keys up to
    Tk - Tq + i. Returns (B, H, Tq, D).
    """
    if backend == AUTO_FUSED:
        backend = "fused" if _fused_attention_serves(q, dropout_p) else "reference"
    if backend == "fused":
        if dropout_p > 0.0:
            raise LmforgeError(f"the fused attention kernel has no dropout (dropout_p="
                               f"{dropout_p}); set the attention dropout to 0 or use kernels: "
                               f"reference")
        return fused_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask)
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]
    tq, tk = q.shape[-2], k.shape[-2]
    # SDPA's is_causal assumes Tq == Tk and takes no other mask: build the causal mask instead
    if causal and (mask is not None or tq != tk):
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        mask = allowed if mask is None else mask & allowed
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=causal)


def _fused_attention_serves(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether the fused kernel can take this call: CPU, fp32/fp64/bf16, no dropout, and not
    traced for export (an exported graph must hold standard ops only)."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64, torch.bfloat16)
            and dropout_p == 0.0 and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export())
