"""The model interface: a factory of torch modules, and what a language model module provides."""

from __future__ import annotations

from abc import ABC, ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.settings import NoSettings, Settings

if TYPE_CHECKING:
    from lmforge.interfaces.export import ExportGraph


@dataclass(frozen=True)
class ModelSpec:
    """What the task and tokenizer tell the model factory."""

    task: str
    vocab_size: int
    pad_id: int | None = None
    num_labels: int | None = None  # classification tasks
    labels: tuple[str, ...] | None = None  # their names, in the order of the model's outputs


class Model(ABC):
    """A registered model: builds an `nn.Module` for a task from its settings and a ModelSpec."""

    Settings = NoSettings
    tasks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def build(self, spec: ModelSpec) -> Module:
        """A freshly initialized module (initialization uses the global torch RNG)."""

    def context_length(self) -> int | None:
        """The longest sequence the built module accepts; None (the default) for no limit.
        Tasks size their windows by it."""
        return None


class Module(nn.Module, metaclass=ABCMeta):
    """Base of every module a model factory builds: what the pipeline and trainers ask of it.

    `kernels_backend` is the kernels backend the module resolved at build time (see
    `lmforge.ops`); the run logs it. Subclasses must implement every abstract method: building
    one that does not fails with a TypeError naming them.
    """

    kernels_backend: str = "reference"

    @abstractmethod
    def flops_per_token(self) -> int:
        """Forward FLOPs per token (training costs about 3x this); the trainer's MFU uses it."""

    def num_parameters(self) -> int:
        """Trainable parameters, each tied tensor counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def export_graphs(self) -> list[ExportGraph]:
        """The graphs an exporter traces, each with its inputs, outputs and carried state.

        A language model exports "model" (`input_ids` (batch, sequence) int64 -> `logits`
        (batch, sequence, vocab) float32) and "decode" (one generation step with its state as
        inputs and outputs); a classifier exports "model" (`input_ids`, `pad_mask` (batch,
        sequence) bool, True = padding -> `logits` (batch, labels)). The modules run the
        reference ops: the exporter builds the model with the "reference" kernels. The base
        module exports nothing.
        """
        raise LmforgeError(f"model {type(self).__name__} does not export to ONNX: its module "
                           f"does not implement export_graphs()")


class LanguageModel(Module):
    """Base of the modules the `lm` task trains and generates with.

    `forward(idx)` maps token ids (B, T) to next-token logits (B, T, V). Generation calls
    `generate_step(idx, state)` with the new tokens (B, t) and the state the previous call
    returned (None at the start: then `idx` is the whole prompt); it returns the logits of the
    last position (B, V) and the new state (a KV cache, a recurrent state). `max_context` is the
    longest sequence the model accepts, or None when it has no limit.
    """

    max_context: int | None = None

    @abstractmethod
    def generate_step(self, idx: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Logits (B, V) after feeding `idx` (B, t) on top of `state`, and the new state."""

    @abstractmethod
    def flops_per_token(self) -> int:
        """Forward FLOPs per token at full context (training costs about 3x this)."""


class SequenceClassifier(Module):
    """Base of the modules the `classify` task trains.

    `forward(idx, pad_mask)` maps token ids (B, T) and a padding mask (B, T), True where a
    position is padding, to class logits (B, num_labels). Padded positions must not change the
    logits: a sequence gives the same logits whatever padding follows it in its batch. Every row
    has at least one real token.
    """

    @abstractmethod
    def flops_per_token(self) -> int:
        """Forward FLOPs per real input token (training costs about 3x this)."""
