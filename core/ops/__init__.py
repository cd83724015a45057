"""The op layer: attention and LSTM through fused kernels when built, else a PyTorch reference."""

from __future__ import annotations

import os
import warnings
from typing import Literal

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError

Backend = Literal["auto", "fused", "reference"]
BACKENDS = ("auto", "fused", "reference")

# Ops whose fused kernel has been measured faster than PyTorch's own op on CPU: `auto` picks a
# fused kernel only once it is listed here (a correct but slower kernel stays opt-in: `fused`).
# benchmarks/RESULTS.md has the figures: attention training and decoding beat SDPA; the LSTM's
# one-step op beats nn.LSTM at generation, while its whole-sequence training op does not yet.
PROMOTED: set[str] = {"attention", "lstm_step"}
# What `auto` resolves to when it takes a fused kernel: calls the kernel cannot serve (dropout,
# another device or dtype, ONNX tracing) go to PyTorch's op instead of failing as `fused` does.
AUTO_FUSED = "auto-fused"

_warned: set[str] = set()


def fused_available(op: str) -> bool:
    """Whether a kernels module for this CPU is built and registers the fused `op`."""
    from lmforge.ops import kernels

    return kernels.load() is not None and hasattr(torch.ops.lmforge, op)


OPS = ("attention", "lstm", "lstm_step")


def is_fused(backend: str) -> bool:
    """Whether a resolved backend runs the fused kernel (asked for, or chosen by auto)."""
    return backend in ("fused", AUTO_FUSED)


def auto_backends() -> dict[str, str]:
    """What `kernels: auto` uses for each op here, and why (for `lmforge doctor`)."""
    summary = {}
    for op in OPS:
        if not fused_available(op):
            summary[op] = "reference (fused kernel not built)"
        elif op in PROMOTED:
            summary[op] = "fused (PyTorch's op for calls it cannot serve)"
        else:
            summary[op] = "reference (fused kernel built, opt-in with kernels: fused)"
    return summary


def resolve_backend(requested: Backend, op: str) -> str:
    """The backend for `op` ("attention", "lstm", "lstm_step"): LMFORGE_KERNELS overrides the
    setting.

    `fused` fails when the op's kernel is not built; `reference` is PyTorch's own op; `auto`
    takes the fused kernel when it is built and promoted (AUTO_FUSED), and otherwise the
    reference, saying so once per op and process.
    """
    requested = os.environ.get("LMFORGE_KERNELS", requested)
    if requested not in BACKENDS:
        raise LmforgeError(f"LMFORGE_KERNELS / kernels: expected one of {', '.join(BACKENDS)}, "
                           f"found {requested!r}")
    if requested == "reference":
        return "reference"
    available = fused_available(op)
    if requested == "fused":
        if not available:
            raise LmforgeError(f"kernels: fused was asked for, but no fused {op} kernel is built "
                               f"for this machine (see `lmforge doctor`); use kernels: auto")
        return "fused"
    if available and op in PROMOTED:
        return AUTO_FUSED
    if op not in _warned:
        _warned.add(op)
        reason = "not faster than PyTorch's yet" if available else "not built"
        warnings.warn(f"lmforge: the fused {op} kernel is {reason}; using the PyTorch reference "
                      f"path", stacklevel=2)
    return "reference"


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
        from lmforge.ops.attention_op import fused_attention
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
