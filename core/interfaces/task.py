"""The task interface: what a model learns, how batches are made and how it is scored."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from rich.console import Console
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.host.registry import Entry
from lmforge.interfaces.data import Record
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


class TaskSettings(Settings):
    """Settings every task that reports metrics shares; each task sets its own default list."""

    metrics: list[str] = Field(
        default_factory=list, description="registered metrics an evaluation reports, in order "
                                           "(`lmforge plugins list` shows the installed ones)")


@dataclass
class TaskData:
    """What a task is set up with: the prepared splits, the tokenizer, where to cache, and the
    registered metrics its `metrics` setting names (their entries: `entry.create()` makes one)."""

    prepared: Any  # lmforge.data.prepare.PreparedData; None when set up for inference
    tokenizer: Tokenizer
    tokenizer_hash: str
    cache_dir: Path
    metrics: Sequence[Entry]


class Task(ABC):
    """Builds batches from tokenized records, computes the loss, evaluates.

    Batches are pure functions of (seed, index): a resumed run sees exactly the batches the
    uninterrupted run would have seen. `index` counts micro-batches from 0 over the whole run.

    Optional capabilities are declared: `generates_text` and `predicts_labels` say whether
    `generate_text` and `predict` work; the base versions of those and of `prepare_inference`
    and `evaluate_file` raise an error naming the task, and `write_report` does nothing.
    """

    Settings = NoSettings
    registered_name = ""  # set by the registry when it creates the task
    generates_text = False  # `lmforge generate` and the samples at the end of `lmforge run`
    predicts_labels = False  # `lmforge predict`

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

    def prepare_inference(self, data: TaskData, labels: Sequence[str],
                          context_length: int | None) -> None:
        """Set up without training data (`data.prepared` is None) from what the run saved: the
        tokenizer and the model spec's `labels`; what `lmforge eval --data`, `predict` and
        `generate` need."""
        raise LmforgeError(f"task {self._name} cannot be set up without its training data")

    def evaluate_file(self, model: nn.Module, path: Path, batch_size: int,
                      read_records: Callable[[Path], list[Record]]) -> dict[str, Any]:
        """Metrics over a data file (`lmforge eval --data`); `read_records` reads it with the
        run's own data-source settings and text-rewriting preprocessors."""
        raise LmforgeError(f"task {self._name} cannot score a data file")

    def predict(self, model: nn.Module, texts: Sequence[str], batch_size: int
                ) -> list[dict[str, Any]]:
        """Each text's predicted `label` and every label's `probabilities` (`predicts_labels`)."""
        raise LmforgeError(f"task {self._name} does not predict labels")

    def generate_text(self, model: nn.Module, prompt: str, *, max_new_tokens: int,
                      temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, repetition_penalty: float = 1.0,
                      seed: int | None = None, stop_strings: Sequence[str] = ()
                      ) -> Iterator[str]:
        """The continuation of `prompt`, streamed piece by piece (`generates_text`)."""
        raise LmforgeError(f"task {self._name} does not generate text")

    def write_report(self, run_dir: Path, results: dict[str, Any], console: Console) -> None:
        """Show and save what one line of figures cannot (tables, plots); `results` maps each
        split or file scored to its figures. The base task has no report."""
        return None

    @property
    def _name(self) -> str:
        return repr(self.registered_name or type(self).__name__)
