"""The task interface: what a model learns, how batches are made and how it is scored."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.interfaces.model import ModelSpec
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.settings import NoSettings, Settings

Batch = dict[str, torch.Tensor]

# Batches for the periodic validation estimate come from a generator of their own, fixed for the
# whole run, so successive estimates are comparable and training randomness is untouched.
EVAL_SEED = 0x5EED


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[torch.device]:
    """The model in eval mode for the block, its own mode restored after; yields its device."""
    was_training = model.training
    model.eval()
    parameter = next(model.parameters(), None)
    try:
        yield parameter.device if parameter is not None else torch.device("cpu")
    finally:
        model.train(was_training)


@dataclass
class TaskData:
    """What a task is set up with: the prepared splits, the tokenizer and where to cache."""

    prepared: Any  # lmforge.data.prepare.PreparedData
    tokenizer: Tokenizer
    tokenizer_hash: str
    cache_dir: Path


class Task(ABC):
    """Builds batches from tokenized records, computes the loss, evaluates.

    Batches are pure functions of (seed, index): a resumed run sees exactly the batches the
    uninterrupted run would have seen. `index` counts micro-batches from 0 over the whole run.
    """

    Settings = NoSettings

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def setup(self, data: TaskData, context_length: int | None) -> None:
        """Tokenize (or load the cached) splits; `context_length` is the model's limit."""

    @abstractmethod
    def model_spec(self) -> ModelSpec:
        """What the model factory needs to know (vocabulary size, labels, ...)."""

    @abstractmethod
    def train_batch(self, index: int, batch_size: int, seed: int) -> Batch:
        """The `index`-th training micro-batch (CPU tensors), determined by `seed` and `index`."""

    @abstractmethod
    def eval_batches(self, split: str, batch_size: int, limit: int | None = None
                     ) -> Iterator[Batch]:
        """Fixed evaluation batches of a split; `limit` caps their number."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch's targets, and the number of targets."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str, batch_size: int) -> dict[str, float]:
        """Metrics over a whole split (e.g. loss, perplexity, bits per byte)."""

    def tokens_in(self, batch: Batch) -> int:
        """Tokens the model reads in a batch (for tokens/s)."""
        return int(batch["input"].numel())
