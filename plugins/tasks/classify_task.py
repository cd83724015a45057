"""The built-in `classify` task: a label per text (sentiment, topic), scored by accuracy and F1."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from rich.console import Console
from rich.table import Table
from torch import nn

from lmforge import hookimpl
from lmforge.errors import LmforgeError
from lmforge.interfaces.data import Record
from lmforge.interfaces.model import ModelSpec
from lmforge.interfaces.task import EVAL_SEED, Batch, Task, TaskData, TaskSettings, eval_mode
from lmforge.plugins.tasks.metrics import majority_baseline, plot_confusion

DEFAULT_MAX_LENGTH = 256
ENCODE_CHUNK = 4096
# what the report table shows: the default metrics' figures
TABLE_FIGURES = {"accuracy", "macro_precision", "macro_recall", "macro_f1", "examples",
                 "per_class"}


@dataclass
class EncodedSplit:
    """A split's token ids (one array per text, already truncated) and label ids."""

    ids: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class Classification(Task):
    """Text classification: a label per record, from the data source's label field or column.

    Labels are compared as strings (a numeric column gives "1", "0", ...); the label list is the
    `labels` setting or the train split's labels in sorted order, and is saved with the model
    (model_spec.json), so prediction needs no training data. Texts are truncated to
    `max_length` tokens and padded on the right to the longest text of their batch; batches
    carry `input` (B, T), `pad_mask` (B, T), True on padding, and `label` (B,). Training draws
    texts without replacement, epoch by epoch, in an order that is a function of (seed, epoch),
    so a resumed run sees the batches an uninterrupted one would have; `word_dropout` replaces
    training tokens with `unk` (or `eos` for tokenizers without one) at random, drawn from the
    same (seed, index). `lmforge predict` labels texts; `lmforge eval --data` scores a labelled
    file read with the run's own source settings. Metrics get scored batches with `target` and
    `predicted` label ids (1-D arrays) and `labels` (the label names).
    """

    predicts_labels = True

    class Settings(TaskSettings):
        max_length: int | None = Field(
            None, ge=1, description="tokens kept per text (the rest is cut); default: the "
                                    f"model's context length, or {DEFAULT_MAX_LENGTH}")
        labels: list[str] | None = Field(
            None, min_length=2, description="every label, in the order of the model's outputs; "
                                            "default: the train split's labels, sorted")
        word_dropout: float = Field(
            0.0, ge=0.0, lt=1.0, description="share of training tokens replaced by unk (word "
                                             "dropout, Iyyer et al. 2015): a regularizer for "
                                             "small data sets")
        class_weights: Literal["none", "balanced"] | dict[str, float] = Field(
            "none", description="loss weight per label: none, balanced (inverse to the label's "
                                "share of the train split) or a weight for each label")
        metrics: list[str] = Field(
            default_factory=lambda: ["accuracy", "macro_precision", "macro_recall", "macro_f1",
                                     "micro_f1", "confusion"],
            description="registered metrics an evaluation reports after the loss, in order; "
                        "the report table needs the default ones")

        @field_validator("labels")
        @classmethod
        def _distinct(cls, labels):
            if labels is not None and len(set(labels)) != len(labels):
                raise ValueError(f"expected distinct labels, found {labels}")
            return labels

        @field_validator("class_weights")
        @classmethod
        def _positive(cls, weights):
            if isinstance(weights, dict):
                bad = {k: w for k, w in weights.items() if not (w > 0 and math.isfinite(w))}
                if bad:
                    raise ValueError(f"expected positive, finite class weights, found {bad}")
            return weights

    # --- set-up ---------------------------------------------------------------------------

    def setup(self, data: TaskData, context_length: int | None) -> None:
        records = {split: list(data.prepared.records(split)) for split in ("train", "val", "test")}
        if not records["train"]:
            raise LmforgeError("the train split is empty: a classifier needs labelled records")
        for split, rows in records.items():
            _check_labelled(split, rows)
        labels = self.settings.labels or sorted({str(r["label"]) for r in records["train"]})
        if len(labels) < 2:
            raise LmforgeError(f"the train split has a single label ({labels[0]!r}): a "
                               f"classifier needs at least two")
        self.prepare_inference(data, labels, context_length)
        self.splits = {split: self._encode_split(split, rows) for split, rows in records.items()}
        self.train_counts = np.bincount(self.splits["train"].labels, minlength=len(labels))
        self.class_weight = self._class_weight()

    def prepare_inference(self, data: TaskData, labels: Sequence[str],
                          context_length: int | None) -> None:
        """What prediction needs and training data is not: the tokenizer, labels, lengths."""
        max_length = self.settings.max_length or context_length or DEFAULT_MAX_LENGTH
        if context_length is not None and max_length > context_length:
            raise LmforgeError(f"task.max_length={max_length} is longer than the model's "
                               f"context length {context_length}")
        self.tokenizer = data.tokenizer
        self.labels = list(labels)
        self.label_ids = {label: i for i, label in enumerate(self.labels)}
        self.max_length = max_length
        self.class_weight = None
        self.metric_entries = data.metrics

    def _encode_split(self, split: str, rows: list[Record]) -> EncodedSplit:
        unknown = Counter(str(r["label"]) for r in rows if str(r["label"]) not in self.label_ids)
        if unknown:
            where = next(r.get("source", "?") for r in rows if str(r["label"]) in unknown)
            raise LmforgeError(
                f"the {split} split has labels the model does not know: "
                f"{', '.join(f'{k!r} ({n}x)' for k, n in unknown.most_common())}, first at "
                f"{where}; labels: {', '.join(self.labels)} (list every label in task.labels)")
        return EncodedSplit(self.encode_texts(r["text"] for r in rows),
                            np.array([self.label_ids[str(r["label"])] for r in rows],
                                     dtype=np.int64))

    def encode_texts(self, texts: Iterable[str]) -> list[np.ndarray]:
        """Token ids of each text, truncated to max_length; an empty text becomes one `eos`
        (every row needs a real token to be pooled)."""
        encoded: list[np.ndarray] = []
        texts = list(texts)
        for start in range(0, len(texts), ENCODE_CHUNK):
            for ids in self.tokenizer.encode_batch(texts[start:start + ENCODE_CHUNK]):
                ids = ids[:self.max_length] or [self.tokenizer.eos_id]
                encoded.append(np.asarray(ids, dtype=np.int64))
        return encoded

    def _class_weight(self) -> torch.Tensor | None:
        weights = self.settings.class_weights
        if weights == "none":
            return None
        if weights == "balanced":
            # n / (k * count): what scikit-learn's class_weight="balanced" gives
            counts = np.maximum(self.train_counts, 1)
            return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)
        missing = [label for label in self.labels if label not in weights]
        extra = [label for label in weights if label not in self.label_ids]
        if missing or extra:
            raise LmforgeError(f"task.class_weights: expected a weight for each label "
                               f"({', '.join(self.labels)}); missing {missing}, unknown {extra}")
        return torch.tensor([weights[label] for label in self.labels], dtype=torch.float32)

    def model_spec(self) -> ModelSpec:
        return ModelSpec(task="classify", vocab_size=self.tokenizer.vocab_size,
                         pad_id=self.tokenizer.pad_id, num_labels=len(self.labels),
                         labels=tuple(self.labels))

    # --- batches --------------------------------------------------------------------------

    def collate(self, ids: Sequence[np.ndarray], labels: np.ndarray | None = None) -> Batch:
        """Pad `ids` on the right to the longest; `pad_mask` is True on padding."""
        lengths = [len(row) for row in ids]
        rows = np.full((len(ids), max(lengths)), self.tokenizer.pad_id, dtype=np.int64)
        for i, row in enumerate(ids):
            rows[i, :len(row)] = row
        batch = {"input": torch.from_numpy(rows),
                 "pad_mask": torch.arange(rows.shape[1])[None, :] >= torch.tensor(lengths)[:, None]}
        if labels is not None:
            batch["label"] = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        return batch

    def train_batch(self, index: int, batch_size: int, seed: int) -> Batch:
        train = self.splits["train"]
        n = len(train)
        positions = np.arange(index * batch_size, (index + 1) * batch_size)
        epochs, offsets = np.divmod(positions, n)
        picks = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            order = np.random.default_rng([seed, int(epoch)]).permutation(n)
            chosen = epochs == epoch
            picks[chosen] = order[offsets[chosen]]
        batch = self.collate([train.ids[i] for i in picks], train.labels[picks])
        if self.settings.word_dropout > 0:
            draws = np.random.default_rng([seed, index, 1]).random(batch["input"].shape)
            dropped = torch.from_numpy(draws < self.settings.word_dropout)
            unknown = self.tokenizer.special_tokens.get("unk", self.tokenizer.eos_id)
            batch["input"] = batch["input"].masked_fill(dropped & ~batch["pad_mask"], unknown)
        return batch

    def eval_batches(self, split: str, batch_size: int, limit: int | None = None
                     ) -> Iterator[Batch]:
        encoded = self._split(split)
        if limit is None:
            # a whole split is scored in order of length: batches of alike lengths pad least
            order = np.argsort([len(row) for row in encoded.ids], kind="stable")
        else:
            order = np.random.default_rng([EVAL_SEED]).permutation(len(encoded))
            order = order[:limit * batch_size]
        for start in range(0, len(order), batch_size):
            picks = order[start:start + batch_size]
            yield self.collate([encoded.ids[i] for i in picks], encoded.labels[picks])

    def _split(self, split: str) -> EncodedSplit:
        if split not in self.splits:
            raise LmforgeError(f"unknown split {split!r}; splits: {', '.join(self.splits)}")
        if not len(self.splits[split]):
            raise LmforgeError(f"the {split} split is empty: nothing to evaluate (give it a "
                               f"share in data.split)")
        return self.splits[split]

    def tokens_in(self, batch: Batch) -> int:
        return int((~batch["pad_mask"]).sum())

    # --- loss, evaluation, prediction -----------------------------------------------------

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        logits = model(batch["input"], batch["pad_mask"])
        weight = None if self.class_weight is None else self.class_weight.to(logits.device)
        return F.cross_entropy(logits.float(), batch["label"], weight=weight), len(batch["label"])

    def evaluate(self, model: nn.Module, split: str, batch_size: int) -> dict[str, Any]:
        figures = self.evaluate_batches(model, self.eval_batches(split, batch_size))
        split_counts = np.bincount(self.splits[split].labels, minlength=len(self.labels))
        figures["majority_baseline"] = majority_baseline(self.train_counts, split_counts,
                                                         self.labels)
        return figures

    @torch.no_grad()
    def evaluate_batches(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, Any]:
        """Loss (mean cross-entropy, unweighted) and the task's metrics."""
        metrics = [entry.create() for entry in self.metric_entries]
        total_nats, examples = 0.0, 0
        with eval_mode(model) as device:
            for batch in batches:
                logits = model(batch["input"].to(device), batch["pad_mask"].to(device)).float()
                target = batch["label"].to(device)
                total_nats += F.cross_entropy(logits, target, reduction="sum").item()
                examples += len(target)
                scored = {"target": target.cpu().numpy(),
                          "predicted": logits.argmax(-1).cpu().numpy(), "labels": self.labels}
                for metric in metrics:
                    metric.update(scored)
        if not examples:
            raise LmforgeError("no labelled texts to evaluate")
        figures = {name: value for metric in metrics for name, value in metric.compute().items()}
        return {"loss": total_nats / examples, **figures}

    def evaluate_file(self, model: nn.Module, path: Path, batch_size: int,
                      read_records: Callable[[Path], list[Record]]) -> dict[str, Any]:
        """Metrics on the labelled records of a file outside the prepared splits."""
        records = read_records(path)
        _check_labelled(str(path), records)
        encoded = self._encode_split(str(path), records)
        order = np.argsort([len(row) for row in encoded.ids], kind="stable")
        batches = (self.collate([encoded.ids[i] for i in order[s:s + batch_size]],
                                encoded.labels[order[s:s + batch_size]])
                   for s in range(0, len(order), batch_size))
        return self.evaluate_batches(model, batches)

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: Sequence[str], batch_size: int = 64
                ) -> list[dict[str, Any]]:
        """The most probable label of each text, and every label's probability."""
        ids = self.encode_texts(texts)
        results: list[dict[str, Any]] = [{}] * len(ids)
        order = np.argsort([len(row) for row in ids], kind="stable")
        with eval_mode(model) as device:
            for start in range(0, len(order), batch_size):
                picks = order[start:start + batch_size]
                batch = self.collate([ids[i] for i in picks])
                logits = model(batch["input"].to(device), batch["pad_mask"].to(device))
                probabilities = logits.float().softmax(-1).cpu()
                for i, row in zip(picks, probabilities, strict=True):
                    probability = dict(zip(self.labels, row.tolist(), strict=True))
                    results[i] = {"label": self.labels[int(row.argmax())],
                                  "probabilities": probability}
        return results

    def write_report(self, run_dir: Path, results: dict[str, Any], console: Console) -> None:
        """Per-label figures beside the majority baseline, and the confusion matrices as
        plots/confusion-SPLIT.png; plots/confusion.png is the test split's (else val's)."""
        plots = run_dir / "plots"
        for split, figures in results.items():
            if figures.keys() >= TABLE_FIGURES:
                console.print(classification_table(split, figures))
            if "confusion" not in figures:
                continue
            stem = split if split in ("train", "val", "test") else "file"
            plot_confusion(plots / f"confusion-{stem}.png", figures["confusion"],
                           f"{run_dir.name}: {split}")
            if split == "test" or (split == "val" and "test" not in results):
                plot_confusion(plots / "confusion.png", figures["confusion"],
                               f"{run_dir.name}: {split}")


def classification_table(split: str, figures: dict[str, Any]) -> Table:
    """Per-label precision, recall, F1 and support, the averages, and the majority baseline."""
    table = Table(title=f"{split}: accuracy {figures['accuracy']:.4f}, macro F1 "
                        f"{figures['macro_f1']:.4f} ({figures['examples']:,} texts)",
                  title_justify="left")
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label, row in figures["per_class"].items():
        table.add_row(label, f"{row['precision']:.4f}", f"{row['recall']:.4f}",
                      f"{row['f1']:.4f}", f"{row['support']:,}")
    table.add_section()
    table.add_row("macro average", f"{figures['macro_precision']:.4f}",
                  f"{figures['macro_recall']:.4f}", f"{figures['macro_f1']:.4f}",
                  f"{figures['examples']:,}")
    baseline = figures.get("majority_baseline")
    if baseline is not None:
        table.caption = (f"majority baseline (always {baseline['label']!r}): accuracy "
                         f"{baseline['accuracy']:.4f}, macro F1 {baseline['macro_f1']:.4f}")
    return table


def _check_labelled(where: str, rows: Iterable[Record]) -> None:
    for row in rows:
        if row.get("label") is None:
            raise LmforgeError(
                f"{row.get('source', where)}: a record without a label; a classifier needs one "
                f"on every record (set label_column / label_field on the data source)")


@hookimpl
def register_tasks(register):
    register("classify", Classification)
