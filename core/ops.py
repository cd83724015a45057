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

_warned_fallback = False


def fused_available() -> bool:
    """Whether the lmforge._C extension with its fused ops is importable."""
    try:
        from lmforge import _C  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch.ops.lmforge, "attention")


def resolve_backend(requested: Backend = "auto") -> str:
    """The backend to use: LMFORGE_KERNELS overrides the setting; `auto` falls back (once loudly).

    `fused` fails when the kernels are not built; `auto` picks them when they are, and otherwise
    the reference path, with one warning per process.
    """
    global _warned_fallback
    requested = os.environ.get("LMFORGE_KERNELS", requested)
    if requested not in BACKENDS:
        raise LmforgeError(f"LMFORGE_KERNELS / kernels: expected one of {', '.join(BACKENDS)}, "
                           f"found {requested!r}")
    if requested == "reference":
        return "reference"
    if fused_available():
        return "fused"
    if requested == "fused":
        raise LmforgeError("kernels: fused was asked for, but the lmforge._C extension has no "
                           "fused kernels here (see `lmforge doctor`); use kernels: auto")
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn("lmforge: fused kernels are not available; using the PyTorch reference "
                      "path (scaled_dot_product_attention, nn.LSTM)", stacklevel=2)
    return "reference"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              key_padding_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
              backend: str = "reference") -> torch.Tensor:
    """Scaled dot-product attention.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D); key_padding_mask: (B, Tk) bool, True where a key is
    padding. With `causal` and Tq < Tk (decoding against a KV cache), query i sees keys up to
    Tk - Tq + i. Returns (B, H, Tq, D).
    """
    if backend == "fused":
        raise LmforgeError("the fused attention kernel is not built in this version")
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]
    if causal and q.shape[-2] != k.shape[-2]:
        tq, tk = q.shape[-2], k.shape[-2]
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        mask = allowed if mask is None else mask & allowed
        causal = False
    if mask is not None and causal:
        tq, tk = q.shape[-2], k.shape[-2]
        mask = mask & torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril()
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=causal)
