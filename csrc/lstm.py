"""The LSTM: the fused CPU ops (lstm.cpp) with their fake and autograd registrations, layer
stacking over them, and the PyTorch reference."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lmforge.ops import why_not_fused

# One layer and direction's parameters in nn.LSTM's layout and gate order (i, f, g, o):
# w_ih (4H, In), w_hh (4H, H), b_ih (4H,), b_hh (4H,).
LstmWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
LstmState = tuple[torch.Tensor, torch.Tensor]


def reference_lstm(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_ih: torch.Tensor,
                   w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
                   reverse: bool = False) -> tuple[torch.Tensor, LstmState]:
    """One layer and direction in plain PyTorch, any float dtype.

    x: (B, T, In); h0, c0: (B, H). Returns output (B, T, H) and the final (h_n, c_n), each
    (B, H); `reverse` runs from the last step to the first, as nn.LSTM's backward direction.
    """
    h, c = h0, c0
    outputs: list[torch.Tensor] = [x.new_empty(0)] * x.shape[1]
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    for t in steps:
        i, f, g, o = (x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs[t] = h
    if not outputs:
        return x.new_empty(x.shape[0], 0, h0.shape[-1]), (h, c)
    return torch.stack(outputs, dim=1), (h, c)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the fused op keeps gates, cell states and their gradients in: float32 for bf16."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def _register() -> None:
    @torch.library.register_fake("lmforge::lstm")
    def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=False):
        B, T, H = x.shape[0], x.shape[1], w_hh.shape[1]
        acc = accumulation_dtype(x.dtype)
        return (x.new_empty(B, T, H), h0.new_empty(B, H), c0.new_empty(B, H),
                x.new_empty(B, T, 4 * H, dtype=acc), x.new_empty(B, T, H, dtype=acc))

    @torch.library.register_fake("lmforge::lstm_backward")
    def _(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, output, gates, cells,
          reverse):
        return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(c0),
                torch.empty_like(w_ih), torch.empty_like(w_hh), w_hh.new_empty(w_hh.shape[0]))

    @torch.library.register_fake("lmforge::lstm_step")
    def _(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return torch.empty_like(h), torch.empty_like(c)

    def lstm_setup(ctx, inputs, output):
        x, h0, c0, w_ih, w_hh, _, _, reverse = inputs
        out, _, _, gates, cells = output
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, out, gates, cells)
        ctx.reverse = reverse
        ctx.mark_non_differentiable(gates, cells)

    def lstm_backward(ctx, grad_out, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
        x, h0, c0, w_ih, w_hh, out, gates, cells = ctx.saved_tensors
        grads = torch.ops.lmforge.lstm_backward(
            _or_zeros(grad_out, out), _or_zeros(grad_h_n, h0), _or_zeros(grad_c_n, c0), x, h0,
            c0, w_ih, w_hh, out, gates, cells, ctx.reverse)
        grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b = grads
        # One bias gradient serves b_ih and b_hh; a copy keeps the two .grad tensors apart.
        return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_b.clone(), None

    torch.library.register_autograd("lmforge::lstm", lstm_backward, setup_context=lstm_setup)

    def step_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def step_backward(ctx, grad_h, grad_c):
        # Generation runs without gradients; when one is asked for, the sequence op over a
        # single step recomputes what its backward needs.
        x, h, c, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors
        x1 = x[:, None]
        out, _, _, gates, cells = torch.ops.lmforge.lstm(x1, h, c, w_ih, w_hh, b_ih, b_hh)
        grads = torch.ops.lmforge.lstm_backward(
            torch.zeros_like(out), _or_zeros(grad_h, h), _or_zeros(grad_c, c), x1, h, c, w_ih,
            w_hh, out, gates, cells, False)
        grad_x, grad_h, grad_c, grad_w_ih, grad_w_hh, grad_b = grads
        return grad_x[:, 0], grad_h, grad_c, grad_w_ih, grad_w_hh, grad_b, grad_b.clone()

    torch.library.register_autograd("lmforge::lstm_step", step_backward,
                                    setup_context=step_setup)


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _initial_state(x: torch.Tensor, state: LstmState | None, count: int,
                   hidden: int) -> LstmState:
    if state is not None:
        return state
    zeros = x.new_zeros(count, x.shape[0], hidden)
    return zeros, zeros


def fused_lstm(x: torch.Tensor, state: LstmState | None, layers: Sequence[LstmWeights],
               dropout: float = 0.0, training: bool = False,
               bidirectional: bool = False) -> tuple[torch.Tensor, LstmState]:
    """nn.LSTM(batch_first=True)'s forward through the fused op, one call per layer and direction.

    x: (B, T, In); state: (h0, c0), each (L * D, B, H), or None for zeros; layers: L * D weight
    tuples in nn.LSTM's order (layer-major, then direction), D = 2 when `bidirectional`.
    Dropout applies between layers in training, as nn.LSTM's. Returns output (B, T, D * H) and
    (h_n, c_n), each (L * D, B, H).
    """
    directions = 2 if bidirectional else 1
    h0, c0 = _initial_state(x, state, len(layers), layers[0][1].shape[1])
    h_n, c_n = [], []
    for layer in range(len(layers) // directions):
        if layer > 0 and dropout > 0 and training:
            x = F.dropout(x, dropout, training=True)
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            out, h, c, _, _ = torch.ops.lmforge.lstm(x, h0[k], c0[k], *layers[k],
                                                      direction == 1)
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        x = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
    return x, (torch.stack(h_n), torch.stack(c_n))


def fused_lstm_step(x: torch.Tensor, state: LstmState | None, layers: Sequence[LstmWeights],
                    dropout: float = 0.0, training: bool = False
                    ) -> tuple[torch.Tensor, LstmState]:
    """One time step of a unidirectional stack: x (B, In) -> the top layer's h (B, H), (h_n, c_n).

    state and the returned (h_n, c_n) are each (L, B, H), as fused_lstm's; a step costs one
    op call per layer.
    """
    h0, c0 = _initial_state(x, state, len(layers), layers[0][1].shape[1])
    h_n, c_n = [], []
    for k, weights in enumerate(layers):
        if k > 0 and dropout > 0 and training:
            x = F.dropout(x, dropout, training=True)
        x, c = torch.ops.lmforge.lstm_step(x, h0[k], c0[k], *weights)
        h_n.append(x)
        c_n.append(c)
    return x, (torch.stack(h_n), torch.stack(c_n))


# Registered at import, before any call, as attention's.
if why_not_fused("lstm") is None:
    _register()
