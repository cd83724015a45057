"""The built-in `lm` task: next-token prediction over windows of the tokenized corpus."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lmforge import hookimpl
from lmforge.errors import LmforgeError
from lmforge.interfaces.data import Record
from lmforge.interfaces.model import ModelSpec
from lmforge.interfaces.task import EVAL_SEED, Batch, Task, TaskData, TaskSettings, eval_mode
from lmforge.plugins.data.sources import TextSource
from lmforge.plugins.tasks.generate import generate_text
from lmforge.plugins.tasks.token_cache import encode_documents, encode_splits

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


class LanguageModeling(Task):
    """Next-token prediction (causal language modeling).

    The tokenized splits are flat token arrays with `eos` after each document. A training batch
    is `batch_size` windows of `block_size + 1` tokens at offsets drawn from a generator seeded by
    (seed, batch index), so batches depend on nothing but the run's seed and the step: a resumed
    run sees the very batches the uninterrupted one would have. `evaluate` scores every token of a
    split once, in consecutive windows, and reports loss (nats per token), perplexity and bits
    per byte (total negative log-likelihood in bits over the UTF-8 bytes of the split's text), the
    last comparable across tokenizers. A data file scored with `lmforge eval --data` is read as
    one plain UTF-8 text document (.gz decompressed); `lmforge generate` continues prompts.
    Metrics get scored batches with `nats` (summed negative log-likelihood), `targets` (tokens
    predicted) and `text_bytes` (UTF-8 bytes of the whole text scored).
    """

    generates_text = True

    class Settings(TaskSettings):
        block_size: int | None = Field(
            None, ge=1, description="tokens per training window; default: the model's context "
                                    "length (gpt: block_size), or 128 for models without one")
        metrics: list[str] = Field(
            default_factory=lambda: ["perplexity", "bits_per_byte"],
            description="registered metrics an evaluation reports after the loss, in order")

    def setup(self, data: TaskData, context_length: int | None) -> None:
        self.prepare_inference(data, (), context_length)
        block = self.block_size
        cache = encode_splits(data.prepared, data.tokenizer, data.tokenizer_hash, data.cache_dir)
        self.tokens = cache.arrays
        self.split_bytes = cache.meta["bytes"]
        train_tokens = len(self.tokens["train"])
        if train_tokens < block + 2:
            raise LmforgeError(f"the train split has {train_tokens} tokens, fewer than one "
                               f"window of block_size {block} + 1: add data or lower block_size")

    def prepare_inference(self, data: TaskData, labels: Sequence[str],
                          context_length: int | None) -> None:
        """What scoring a text file and generating need: the tokenizer and the window size."""
        block = self.settings.block_size or context_length or 128
        if context_length is not None and block > context_length:
            raise LmforgeError(f"task.block_size={block} is longer than the model's context "
                               f"length {context_length}")
        self.block_size = block
        self.tokenizer = data.tokenizer
        self.metric_entries = data.metrics

    def model_spec(self) -> ModelSpec:
        return ModelSpec(task="lm", vocab_size=self.tokenizer.vocab_size,
                         pad_id=self.tokenizer.pad_id)

    def _windows(self, tokens: np.ndarray, starts: np.ndarray, length: int) -> Batch:
        rows = np.stack([tokens[s:s + length + 1] for s in starts]).astype(np.int64)
        window = torch.from_numpy(rows)
        return {"input": window[:, :-1], "target": window[:, 1:]}

    def train_batch(self, index: int, batch_size: int, seed: int) -> Batch:
        tokens = self.tokens["train"]
        rng = np.random.default_rng([seed, index])
        starts = rng.integers(0, len(tokens) - self.block_size - 1, size=batch_size)
        return self._windows(tokens, starts, self.block_size)

    def eval_batches(self, split: str, batch_size: int, limit: int | None = None
                     ) -> Iterator[Batch]:
        tokens = self._split(split)
        if limit is None:
            yield from self._consecutive_batches(tokens, batch_size)
            return
        length = min(self.block_size, len(tokens) - 1)
        rng = np.random.default_rng([EVAL_SEED, SPLIT_CODES.get(split, 3)])
        for _ in range(limit):
            starts = rng.integers(0, len(tokens) - length, size=batch_size)
            yield self._windows(tokens, starts, length)

    def _split(self, split: str) -> np.ndarray:
        if split not in self.tokens:
            raise LmforgeError(f"unknown split {split!r}; splits: {', '.join(self.tokens)}")
        tokens = self.tokens[split]
        if len(tokens) < 2:
            raise LmforgeError(f"the {split} split has {len(tokens)} tokens: nothing to "
                               f"evaluate (give it a share in data.split)")
        return tokens

    def _consecutive_batches(self, tokens: np.ndarray, batch_size: int) -> Iterator[Batch]:
        """Windows that predict every token after the first exactly once."""
        block = self.block_size
        full = (len(tokens) - 1) // block
        for first in range(0, full, batch_size):
            starts = np.arange(first, min(first + batch_size, full)) * block
            yield self._windows(tokens, starts, block)
        rest = (len(tokens) - 1) - full * block
        if rest:
            yield self._windows(tokens, np.array([full * block]), rest)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        logits = model(batch["input"])
        target = batch["target"]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1))
        return loss, target.numel()

    @torch.no_grad()
    def evaluate_tokens(self, model: nn.Module, tokens: np.ndarray, n_bytes: int,
                        batch_size: int) -> dict[str, float]:
        """Loss and the task's metrics over `tokens`, whose text has `n_bytes` UTF-8 bytes."""
        metrics = [entry.create() for entry in self.metric_entries]
        total_nats, count = 0.0, 0
        with eval_mode(model) as device:
            for batch in self._consecutive_batches(tokens, batch_size):
                batch = {k: v.to(device) for k, v in batch.items()}
                loss, targets = self.loss(model, batch)
                nats = loss.item() * targets
                total_nats += nats
                count += targets
                for metric in metrics:
                    metric.update({"nats": nats, "targets": targets, "text_bytes": n_bytes})
        figures = {name: value for metric in metrics for name, value in metric.compute().items()}
        return {"loss": total_nats / count, **figures, "tokens": count, "bytes": n_bytes}

    def evaluate(self, model: nn.Module, split: str, batch_size: int) -> dict[str, float]:
        return self.evaluate_tokens(model, self._split(split), self.split_bytes[split], batch_size)

    def evaluate_file(self, model: nn.Module, path: Path, batch_size: int,
                      read_records: Callable[[Path], list[Record]]) -> dict[str, Any]:
        """Loss, perplexity and bits per byte of a text file read whole, `eos` after it as in
        training (the run's own source settings, such as its unit, do not apply)."""
        source = TextSource(TextSource.Settings(paths=[str(path)], unit="file"))
        chunks = list(encode_documents((r["text"] for r in source.records()), self.tokenizer))
        tokens = np.concatenate([np.zeros(0, dtype=np.int64), *(ids for ids, _, _ in chunks)])
        return self.evaluate_tokens(model, tokens, sum(n for _, _, n in chunks), batch_size)

    def generate_text(self, model: nn.Module, prompt: str, **sampling: Any) -> Iterator[str]:
        return generate_text(model, self.tokenizer, prompt, **sampling)


@hookimpl
def register_tasks(register):
    register("lm", LanguageModeling)
