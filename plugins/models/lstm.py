"""Built-in lstm model: a stacked LSTM as a language model (carrying (h, c)) or a classifier."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from lmforge import hookimpl, ops
from lmforge.errors import LmforgeError
from lmforge.interfaces.export import ExportGraph, StateSpec, TensorSpec
from lmforge.interfaces.model import LanguageModel, Model, ModelSpec
from lmforge.ops import lstm as lstm_ops
from lmforge.plugins.models.classifier_parts import require_num_labels
from lmforge.plugins.models.graphs import lm_graph
from lmforge.plugins.models.lstm_classifier import LstmClassifier
from lmforge.settings import Settings as ComponentSettings

# (h, c), each (n_layer, B, hidden_size): what `LstmModule.generate_step` carries between calls.
LstmState = tuple[torch.Tensor, torch.Tensor]


def resolve_lstm_backend(requested: str) -> str:
    """The LSTM backend; `lmforge.ops.resolve_backend` explains the choice."""
    return ops.resolve_backend(requested, "lstm")


class LstmDecodeStep(nn.Module):
    """`LstmModule.generate_step` on nn.LSTM as an export graph: `input_ids` (B, step), `h` and
    `c` (n_layer, B, hidden_size) -> the logits of the last position (B, V), `h_out`, `c_out`."""

    def __init__(self, model: LstmModule):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        out, (h, c) = model.lstm(model.dropout(model.embedding(input_ids)), (h, c))
        return model.head(model.dropout(out[:, -1])), h, c


class LstmModule(LanguageModel):
    """Token embedding -> dropout -> n_layer stacked LSTM -> dropout -> lm head."""

    max_context = None  # a recurrent model reads sequences of any length

    def __init__(self, settings: Lstm.Settings, vocab_size: int, backend: str,
                 step_backend: str | None = None):
        super().__init__()
        s = settings
        self.settings = settings
        self.vocab_size = vocab_size
        self.kernels_backend = backend
        # generation steps may take the fused one-step op while training keeps nn.LSTM
        self.step_backend = step_backend or backend
        self.embedding = nn.Embedding(vocab_size, s.n_embd)
        self.dropout = nn.Dropout(s.dropout)
        # nn.LSTM applies its own dropout between layers only, hence the one above for the
        # embedding and the output; it warns when asked for dropout with a single layer.
        self.lstm = nn.LSTM(s.n_embd, s.hidden_size, num_layers=s.n_layer, batch_first=True,
                            dropout=s.dropout if s.n_layer > 1 else 0.0)
        self.head = nn.Linear(s.hidden_size, vocab_size)
        # AWD-LSTM's init: small uniform embedding and head (nn.Embedding's N(0, 1) would make
        # a tied head's first logits huge); nn.LSTM keeps its U(-1/sqrt(H), 1/sqrt(H)).
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if s.tie_embeddings:
            self.head.weight = self.embedding.weight  # (V, n_embd) serves both ways
        else:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)

    def _check_ids(self, idx: torch.Tensor, where: str) -> None:
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"lstm {where}: expected token ids of shape (batch, time) with "
                             f"time >= 1, found shape {tuple(idx.shape)}")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) of every position of `idx` (B, T)."""
        self._check_ids(idx, "forward")
        x = self.dropout(self.embedding(idx))  # (B, T, n_embd)
        out, _ = self._recurrent(x, None)  # (B, T, H), starting from zero (h, c)
        return self.head(self.dropout(out))  # (B, T, V)

    def generate_step(self, idx: torch.Tensor, state: LstmState | None
                      ) -> tuple[torch.Tensor, LstmState]:
        """Logits (B, V) after `idx` (B, t) from `state` (None: zero state), and the new (h, c)."""
        self._check_ids(idx, "generate_step")
        x = self.dropout(self.embedding(idx))  # (B, t, n_embd)
        out, (h, c) = self._recurrent(x, state)  # out (B, t, H); h, c (n_layer, B, H)
        logits = self.head(self.dropout(out[:, -1, :]))  # (B, V): the last position only
        return logits, (h, c)

    def export_graphs(self) -> list[ExportGraph]:
        """"model", and "decode" (`LstmDecodeStep`) with (h, c) as recurrent state."""
        state = (self.settings.n_layer, "batch", self.settings.hidden_size)
        decode = ExportGraph(
            "decode", LstmDecodeStep(self),
            inputs=(TensorSpec("input_ids", "int64", ("batch", "step")),
                    TensorSpec("h", "float32", state), TensorSpec("c", "float32", state)),
            outputs=(TensorSpec("logits", "float32", ("batch", self.vocab_size)),
                     TensorSpec("h_out", "float32", state), TensorSpec("c_out", "float32", state)),
            state=StateSpec("recurrent", ("h", "c"), ("h_out", "c_out"), batch_axis=1,
                            sequence_axis=None))
        return [lm_graph(self, self.vocab_size, None), decode]

    def _recurrent(self, x: torch.Tensor, state: LstmState | None
                   ) -> tuple[torch.Tensor, LstmState]:
        """self.lstm over x (B, t, n_embd) from `state`, through the fused op when chosen."""
        one_step = x.shape[1] == 1
        # the step backend serves inference steps (generation runs without gradients)
        inference_step = one_step and not torch.is_grad_enabled()
        if not ops.is_fused(self.step_backend if inference_step else self.kernels_backend):
            return self.lstm(x, state)
        # The fused op reads nn.LSTM's own parameters, so state dicts stay nn.LSTM's.
        lstm = self.lstm
        layers = [tuple(getattr(lstm, f"{name}_l{k}")
                        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                  for k in range(lstm.num_layers)]
        if one_step:  # a generation step: the light one-step op per layer
            h, state = lstm_ops.fused_lstm_step(x[:, 0], state, layers, lstm.dropout,
                                                self.training)
            return h[:, None], state
        return lstm_ops.fused_lstm(x, state, layers, lstm.dropout, self.training)

    def flops_per_token(self) -> int:
        """Forward FLOPs per token: sum over layers of 2*4*H*(In + H), plus 2*H*V for the head.

        Each layer computes four gates from its input (In = n_embd for the first layer,
        hidden_size after) and its previous h: a (In + H) x 4H matmul, one multiply-add per
        weight. The head is an H x V matmul, counted even when tied. Biases, gate
        nonlinearities and the embedding lookup are left out. No context term: the cost per
        token does not depend on the sequence length.
        """
        s = self.settings
        H = s.hidden_size
        layers = sum(2 * 4 * H * ((s.n_embd if i == 0 else H) + H) for i in range(s.n_layer))
        return layers + 2 * H * self.vocab_size


class Lstm(Model):
    """A stacked LSTM (the classic recurrent baseline), for the `lm` and `classify` tasks.

    Token embedding, `n_layer` LSTM layers (`torch.nn.LSTM`, on oneDNN on CPU, or lmforge's
    fused kernel over the same parameters with `kernels: fused`) and a linear head, with
    dropout on the embedding, between layers and on the output. No context limit;
    generation carries the recurrent state (h, c), so each new token costs the same.
    `tie_embeddings` shares the embedding with the head and needs n_embd == hidden_size.
    For `classify`, the LSTM reads each sequence's real tokens (both ways when
    `bidirectional`), its states are pooled over them (`pooling`) and a linear layer gives the
    class logits.
    """

    class Settings(ComponentSettings):
        n_embd: int = Field(128, ge=1, le=65536, description="token embedding width")
        hidden_size: int = Field(512, ge=1, le=65536, description="LSTM hidden and cell width")
        n_layer: int = Field(2, ge=1, le=64, description="stacked LSTM layers")
        dropout: float = Field(0.0, ge=0.0, lt=1.0,
                               description="on the embedding, between layers and on the output")
        tie_embeddings: bool = Field(False, description="lm only: the head reuses the embedding; "
                                                        "needs n_embd == hidden_size")
        kernels: Literal["auto", "fused", "reference"] = Field(
            "auto", description="fused: lmforge's CPU LSTM kernel (an error when not built); "
                                "auto: nn.LSTM until the fused kernel is promoted")
        # Off by default because the lm task cannot use it; classifiers usually gain from it.
        bidirectional: bool = Field(False, description="classify only: a second LSTM per layer "
                                                       "reads each sequence backwards")
        pooling: Literal["mean", "max", "last"] = Field(
            "max", description="classify only: how the states of the real tokens become one "
                               "vector (last: each direction's final state)")

        @model_validator(mode="after")
        def _tied_widths_match(self):
            # A projection from hidden_size to n_embd would allow tying at any width, but it
            # adds a matrix and a bottleneck before the head; equal widths keep the model plain.
            if self.tie_embeddings and self.n_embd != self.hidden_size:
                raise ValueError(f"tie_embeddings needs n_embd == hidden_size, found n_embd="
                                 f"{self.n_embd}, hidden_size={self.hidden_size}; make them "
                                 f"equal or set tie_embeddings: false")
            return self

    tasks = ("lm", "classify")

    def build(self, spec: ModelSpec) -> LstmModule | LstmClassifier:
        s = self.settings
        if spec.task not in self.tasks:
            raise LmforgeError(f"lstm supports the tasks {', '.join(self.tasks)}; found task "
                               f"{spec.task!r}")
        if spec.task == "lm" and s.bidirectional:
            raise LmforgeError("lstm: bidirectional: true would let the lm task read the tokens "
                               "it predicts; set bidirectional: false")
        if spec.task == "classify" and s.tie_embeddings:
            raise LmforgeError("lstm: tie_embeddings applies to the lm task's head only; set "
                               "tie_embeddings: false for classify")
        backend = resolve_lstm_backend(s.kernels)
        if spec.task == "classify":
            return LstmClassifier(s, spec.vocab_size, require_num_labels(spec, "lstm"), backend)
        return LstmModule(s, spec.vocab_size, backend,
                          ops.resolve_backend(s.kernels, "lstm_step"))


@hookimpl
def register_models(register):
    register("lstm", Lstm)
