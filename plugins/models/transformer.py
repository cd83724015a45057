"""Built-in transformer model: a bidirectional pre-LN encoder for sequence classification."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from lmforge import hookimpl, ops
from lmforge.errors import LmforgeError
from lmforge.interfaces.export import ExportGraph
from lmforge.interfaces.model import Model, ModelSpec, SequenceClassifier
from lmforge.plugins.models.classifier_parts import check_inputs, masked_mean, require_num_labels
from lmforge.plugins.models.gpt import Block, heads_divide_width, init_gpt2
from lmforge.plugins.models.graphs import classifier_graph
from lmforge.settings import Settings as ComponentSettings


class TransformerClassifier(SequenceClassifier):
    """Embeddings ([CLS] first if pooling: first) -> bidirectional blocks -> pooling -> linear."""

    def __init__(self, settings: Transformer.Settings, vocab_size: int, num_labels: int,
                 backend: str):
        super().__init__()
        s = settings
        self.settings = settings
        self.kernels_backend = backend
        self.use_cls = s.pooling == "first"
        self.wte = nn.Embedding(vocab_size, s.n_embd)
        self.wpe = nn.Embedding(s.max_length + self.use_cls, s.n_embd)  # [CLS] takes position 0
        # The [CLS] vector replaces a vocabulary entry, so tokenizers need no special token.
        self.cls = nn.Parameter(torch.zeros(s.n_embd)) if self.use_cls else None
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(Block(s.n_embd, s.n_head, s.dropout, s.bias, backend,
                                          causal=False) for _ in range(s.n_layer))
        self.ln_f = nn.LayerNorm(s.n_embd, bias=s.bias)
        self.head = nn.Linear(s.n_embd, num_labels)
        init_gpt2(self, s.n_layer)
        if self.cls is not None:
            nn.init.normal_(self.cls, mean=0.0, std=0.02)  # as the token embeddings

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_labels) of `idx` (B, T), T <= max_length, padding ignored."""
        check_inputs(idx, pad_mask, "transformer")
        s = self.settings
        if idx.shape[1] > s.max_length:
            raise ValueError(f"transformer: at most max_length={s.max_length} tokens, found "
                             f"{idx.shape[1]}; the classify task truncates to context_length()")
        x = self.wte(idx)  # (B, T, C)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1)  # (B, 1 + T, C)
            pad_mask = F.pad(pad_mask, (1, 0), value=False)  # [CLS] is real
        positions = torch.arange(x.shape[1], device=idx.device)
        x = self.drop(x + self.wpe(positions))
        for block in self.blocks:
            # Padded keys are masked out, so real positions never read padding; padded
            # positions compute states of their own that the pooling drops.
            x, _ = block(x, key_padding_mask=pad_mask)
        x = self.ln_f(x)
        pooled = x[:, 0] if self.cls is not None else masked_mean(x, pad_mask)  # (B, C)
        return self.head(pooled)

    def export_graphs(self) -> list[ExportGraph]:
        return [classifier_graph(self, self.head.out_features, self.settings.max_length)]

    def flops_per_token(self) -> int:
        """Forward FLOPs per token at full length: 2*N + 4*n_layer*max_length*C.

        N counts the block and final LayerNorm parameters, one multiply-add per weight per
        token. Attention scores and the weighted sum each cost 2*t*C per token at length t,
        and bidirectional attention reads all t keys (gpt's causal count halves this). The
        head and the [CLS] position run once per sequence and are left out, as are softmax,
        GELU and LayerNorm arithmetic.
        """
        s = self.settings
        blocks = sum(p.numel() for p in self.blocks.parameters())
        blocks += sum(p.numel() for p in self.ln_f.parameters())
        return 2 * blocks + 4 * s.n_layer * s.max_length * s.n_embd


class Transformer(Model):
    """A bidirectional transformer encoder (BERT-style, trained from scratch), for `classify`.

    Pre-LayerNorm blocks as gpt's but without the causal mask, attention that ignores padded
    keys, learned positions for at most `max_length` tokens, then `pooling`: the mean of the
    real tokens' states, or the state of a learned [CLS] vector put first. Attention runs on the
    `kernels` backend (see `lmforge doctor`).
    """

    class Settings(ComponentSettings):
        # Small defaults: about ten thousand short sentences do not feed a deep encoder.
        n_layer: int = Field(2, ge=1, le=256, description="encoder blocks")
        n_head: int = Field(4, ge=1, le=256, description="attention heads per block")
        n_embd: int = Field(128, ge=1, le=65536,
                            description="width of the residual stream; divisible by n_head")
        max_length: int = Field(128, ge=1, le=1_000_000,
                                description="longest sequence (positions learned), in tokens; "
                                            "the classify task truncates to it")
        dropout: float = Field(0.1, ge=0.0, lt=1.0,
                               description="on embeddings, attention weights and residual "
                                           "branches (kernels: fused needs 0)")
        bias: bool = Field(True, description="biases in Linear and LayerNorm layers")
        pooling: Literal["mean", "first"] = Field(
            "mean", description="mean of the real tokens' states, or the state of a learned "
                                "[CLS] vector put before them")
        kernels: Literal["auto", "fused", "reference"] = Field(
            "auto", description="attention backend: fused kernels when built and promoted "
                                "(auto), always fused, or always the PyTorch reference")

        _heads_divide_width = model_validator(mode="after")(heads_divide_width)

    tasks = ("classify",)

    def context_length(self) -> int:
        return self.settings.max_length

    def build(self, spec: ModelSpec) -> TransformerClassifier:
        if spec.task not in self.tasks:
            raise LmforgeError(f"transformer supports the tasks {', '.join(self.tasks)}; found "
                               f"task {spec.task!r} (for lm use gpt)")
        backend = ops.resolve_backend(self.settings.kernels, "attention")
        return TransformerClassifier(self.settings, spec.vocab_size,
                                     require_num_labels(spec, "transformer"), backend)


@hookimpl
def register_models(register):
    register("transformer", Transformer)
