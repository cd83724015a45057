"""What the classifier models share: input checks and pooling that ignores padding."""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError
from lmforge.interfaces.model import ModelSpec


def require_num_labels(spec: ModelSpec, model: str) -> int:
    """spec.num_labels for the classify task, or an error naming `model`."""
    if spec.num_labels is None or spec.num_labels < 2:
        raise LmforgeError(f"{model} for the classify task needs num_labels >= 2 from the task, "
                           f"found {spec.num_labels!r}")
    return spec.num_labels


def check_inputs(idx: torch.Tensor, pad_mask: torch.Tensor, model: str) -> None:
    """Token ids (B, T), T >= 1, and a bool padding mask of the same shape, padding on the right
    of at least one real token in every row (the pooling and the LSTM's reversal rely on it).

    While a graph is traced for export only the shapes are checked: a check of the values
    cannot be part of a graph, and the runtime that feeds the graph pads on the right itself.
    """
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"{model}: expected token ids of shape (batch, time) with time >= 1, "
                         f"found shape {tuple(idx.shape)}")
    if pad_mask.shape != idx.shape or pad_mask.dtype != torch.bool:
        raise ValueError(f"{model}: expected a bool pad_mask of shape {tuple(idx.shape)}, "
                         f"found {pad_mask.dtype} of shape {tuple(pad_mask.shape)}")
    if torch.compiler.is_exporting():
        return
    if pad_mask[:, 0].any():
        rows = pad_mask[:, 0].nonzero().flatten().tolist()
        raise ValueError(f"{model}: every row needs at least one real token first, found rows "
                         f"{rows} starting with padding")
    if (pad_mask[:, :-1] & ~pad_mask[:, 1:]).any():
        raise ValueError(f"{model}: padding must be on the right (real tokens first), found a "
                         f"real token after padding")


def lengths(pad_mask: torch.Tensor) -> torch.Tensor:
    """Real tokens per row (B,); with padding on the right, row b's are 0 .. lengths[b] - 1."""
    return (~pad_mask).sum(dim=1)


def masked_mean(states: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Mean of states (B, T, C) over the real positions of each row -> (B, C)."""
    real = (~pad_mask).unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    return (states * real).sum(dim=1) / real.sum(dim=1)


def masked_max(states: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Elementwise max of states (B, T, C) over the real positions of each row -> (B, C)."""
    return states.masked_fill(pad_mask.unsqueeze(-1), -torch.inf).amax(dim=1)


def at_last_token(states: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """The state (B, C) at each row's last real position (padding on the right)."""
    last = lengths(pad_mask) - 1  # (B,)
    return states[torch.arange(states.shape[0], device=states.device), last]
