"""The lstm model's classifier: a (bidirectional) LSTM over the real tokens, pooled, then linear."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lmforge import ops
from lmforge.interfaces.export import ExportGraph
from lmforge.interfaces.model import SequenceClassifier
from lmforge.ops import lstm as lstm_ops
from lmforge.plugins.models.classifier_parts import (
    at_last_token,
    check_inputs,
    lengths,
    masked_max,
    masked_mean,
)
from lmforge.plugins.models.graphs import classifier_graph

if TYPE_CHECKING:
    from lmforge.plugins.models.lstm import Lstm


def reverse_within_length(x: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
    """Each row of x (B, T, C) with its first n_real[b] steps reversed and its padding in place.

    Applied twice it gives x back, so it both feeds the backward direction and restores the
    order of that direction's outputs.
    """
    steps = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    n = n_real[:, None]  # (B, 1)
    source = torch.where(steps < n, n - 1 - steps, steps)  # (B, T)
    return x.gather(1, source.unsqueeze(-1).expand_as(x))


class LstmClassifier(SequenceClassifier):
    """Embedding -> dropout -> LSTM (both ways if bidirectional) -> pooling -> dropout -> linear."""

    def __init__(self, settings: Lstm.Settings, vocab_size: int, num_labels: int, backend: str):
        super().__init__()
        s = settings
        self.settings = settings
        self.kernels_backend = backend
        self.embedding = nn.Embedding(vocab_size, s.n_embd)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)  # as the lstm language model
        self.dropout = nn.Dropout(s.dropout)
        directions = 2 if s.bidirectional else 1
        # One single-layer nn.LSTM per layer and direction, not one bidirectional nn.LSTM: the
        # backward direction must start at each row's last real token, which nn.LSTM only does
        # for packed sequences, and packing ran twice as slow here as two unpacked calls
        # (forward + backward, 64 rows of 40 tokens, hidden 128, one thread: 69 against 34 ms).
        self.layers = nn.ModuleList(
            nn.ModuleList(nn.LSTM(s.n_embd if i == 0 else directions * s.hidden_size,
                                  s.hidden_size, batch_first=True) for _ in range(directions))
            for i in range(s.n_layer))
        self.head = nn.Linear(directions * s.hidden_size, num_labels)

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_labels) of `idx` (B, T), padding (True in pad_mask) ignored."""
        check_inputs(idx, pad_mask, "lstm")
        n_real = lengths(pad_mask)  # (B,)
        x = self.embedding(idx)  # (B, T, n_embd)
        for layer in self.layers:
            x = self.dropout(x)  # on the embedding and between layers, as the language model
            # The forward direction reads padding only after a row's real tokens, where the
            # pooling ignores it; the backward one reads each row reversed within its length.
            outputs = [self._run(layer[0], x)]
            if len(layer) == 2:
                backward = self._run(layer[1], reverse_within_length(x, n_real))
                outputs.append(reverse_within_length(backward, n_real))
            x = torch.cat(outputs, dim=-1)  # (B, T, D * H)
        return self.head(self.dropout(self._pool(x, pad_mask)))  # (B, num_labels)

    def _run(self, lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
        """One layer and direction over x (B, T, In) from zero state -> (B, T, H)."""
        if not ops.is_fused(self.kernels_backend):
            return lstm(x)[0]
        # The fused op reads nn.LSTM's own parameters, so both backends share state dicts.
        weights = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
        return lstm_ops.fused_lstm(x, None, [weights])[0]

    def _pool(self, states: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D * H) -> (B, D * H) over the real positions, as the `pooling` setting says."""
        how = self.settings.pooling
        if how == "mean":
            return masked_mean(states, pad_mask)
        if how == "max":
            return masked_max(states, pad_mask)
        # last: each direction's final state; the backward direction ends at position 0.
        H = self.settings.hidden_size
        forward_last = at_last_token(states[..., :H], pad_mask)
        if not self.settings.bidirectional:
            return forward_last
        return torch.cat([forward_last, states[:, 0, H:]], dim=-1)

    def export_graphs(self) -> list[ExportGraph]:
        return [classifier_graph(self, self.head.out_features, None)]

    def flops_per_token(self) -> int:
        """Forward FLOPs per token: over layers and directions, 2*4*H*(In + H).

        As the language model's (four gates from the input and the previous h), with In =
        n_embd for the first layer and D * hidden_size after; the head runs once per sequence
        and is left out.
        """
        s = self.settings
        H, D = s.hidden_size, 2 if s.bidirectional else 1
        return sum(D * 2 * 4 * H * ((s.n_embd if i == 0 else D * H) + H)
                   for i in range(s.n_layer))
