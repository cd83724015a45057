"""Built-in textcnn model: Kim (2014)'s convolutional sentence classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from lmforge import hookimpl
from lmforge.errors import LmforgeError
from lmforge.interfaces.export import ExportGraph
from lmforge.interfaces.model import Model, ModelSpec, SequenceClassifier
from lmforge.plugins.models.classifier_parts import (
    check_inputs,
    lengths,
    masked_max,
    require_num_labels,
)
from lmforge.plugins.models.graphs import classifier_graph
from lmforge.settings import Settings as ComponentSettings


class TextCnnModule(SequenceClassifier):
    """Embedding -> one Conv1d per width -> ReLU -> max over time -> dropout -> linear."""

    def __init__(self, settings: TextCnn.Settings, vocab_size: int, num_labels: int):
        super().__init__()
        s = settings
        self.settings = settings
        self.embedding = nn.Embedding(vocab_size, s.n_embd)
        # Kim's CNN-rand initializes the word vectors from U(-0.25, 0.25).
        nn.init.uniform_(self.embedding.weight, -0.25, 0.25)
        self.convs = nn.ModuleList(nn.Conv1d(s.n_embd, s.num_filters, k) for k in s.kernel_sizes)
        self.dropout = nn.Dropout(s.dropout)
        self.head = nn.Linear(s.num_filters * len(s.kernel_sizes), num_labels)

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_labels) of `idx` (B, T), padding (True in pad_mask) ignored."""
        check_inputs(idx, pad_mask, "textcnn")
        x = self.embedding(idx).masked_fill(pad_mask.unsqueeze(-1), 0.0)  # (B, T, E)
        x = x.transpose(1, 2)  # (B, E, T): Conv1d wants channels first
        n_real = lengths(pad_mask)  # (B,)
        features = []
        for conv in self.convs:
            k = conv.kernel_size[0]
            # A wide convolution (k - 1 zeros on both sides): every window holding at least one
            # real token is scored, so sequences shorter than k still give features. Padding
            # embeddings are zero too, so a window reads the same zeros whatever padding
            # follows the row; windows of padding alone are masked out of the max.
            windows = F.relu(conv(F.pad(x, (k - 1, k - 1))))  # (B, F, T + k - 1)
            starts = torch.arange(windows.shape[-1], device=idx.device)  # (T + k - 1,)
            outside = starts[None, :] >= (n_real + k - 1)[:, None]  # (B, T + k - 1)
            features.append(masked_max(windows.transpose(1, 2), outside))  # (B, F)
        return self.head(self.dropout(torch.cat(features, dim=-1)))  # (B, num_labels)

    def export_graphs(self) -> list[ExportGraph]:
        return [classifier_graph(self, self.head.out_features, None)]

    def flops_per_token(self) -> int:
        """Forward FLOPs per token: 2 * k * n_embd * num_filters for each width k.

        Each real token starts about one window per width, and a window is a k * n_embd by
        num_filters matmul (one multiply-add per weight). The head runs once per sequence and
        the k - 1 extra windows of the wide convolution once per width per sequence; both are
        left out, as are ReLU, max and the embedding lookup.
        """
        s = self.settings
        return sum(2 * k * s.n_embd * s.num_filters for k in s.kernel_sizes)


class TextCnn(Model):
    """A convolutional sentence classifier (Kim 2014), for the `classify` task.

    Token embeddings, parallel convolutions of several widths, ReLU, max-over-time pooling
    over the real tokens, dropout and a linear layer. The defaults are Kim's (widths 3, 4, 5
    with 100 filters each, dropout 0.5) with a narrower embedding learned from scratch, which
    suits about ten thousand short sentences. No context limit.
    """

    class Settings(ComponentSettings):
        n_embd: int = Field(128, ge=1, le=65536,
                            description="token embedding width (Kim used 300-wide word2vec "
                                        "vectors; 128 learned from scratch suit ~10k sentences)")
        kernel_sizes: list[int] = Field(
            [3, 4, 5], min_length=1, max_length=16,
            description="convolution widths in tokens, one bank of num_filters per width")
        num_filters: int = Field(100, ge=1, le=65536, description="feature maps per width")
        dropout: float = Field(0.5, ge=0.0, lt=1.0,
                               description="on the pooled features before the linear layer "
                                           "(Kim: 0.5)")

        @field_validator("kernel_sizes")
        @classmethod
        def _widths_distinct_and_in_range(cls, widths: list[int]) -> list[int]:
            if not all(1 <= k <= 64 for k in widths):
                raise ValueError(f"kernel_sizes must be widths from 1 to 64, found {widths}")
            if len(set(widths)) != len(widths):
                raise ValueError(f"kernel_sizes must be distinct widths, found {widths}; to "
                                 f"get more features of one width raise num_filters")
            return widths

    tasks = ("classify",)

    def build(self, spec: ModelSpec) -> TextCnnModule:
        if spec.task not in self.tasks:
            raise LmforgeError(f"textcnn supports the tasks {', '.join(self.tasks)}; found task "
                               f"{spec.task!r}")
        return TextCnnModule(self.settings, spec.vocab_size, require_num_labels(spec, "textcnn"))


@hookimpl
def register_models(register):
    register("textcnn", TextCnn)
