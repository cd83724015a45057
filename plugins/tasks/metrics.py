"""The built-in tasks' registered metrics: perplexity and bits per byte for `lm`; accuracy,
precision, recall and F1 from a streaming confusion matrix for `classify`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from lmforge import hookimpl
from lmforge.atomic import atomic_file
from lmforge.interfaces.metric import Metric


class ConfusionMatrix:
    """Counts of (true label, predicted label) pairs, updated batch by batch.

    Nothing but the K x K counts is kept, so a split of any size is scored in constant memory.
    Rows are true labels, columns predictions, as in scikit-learn.
    """

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.counts = np.zeros((len(labels), len(labels)), dtype=np.int64)

    def update(self, target: torch.Tensor | np.ndarray, predicted: torch.Tensor | np.ndarray
               ) -> None:
        """Add a batch of true and predicted label ids (1-D, same length)."""
        target, predicted = np.asarray(target).ravel(), np.asarray(predicted).ravel()
        if target.shape != predicted.shape:
            raise ValueError(f"expected as many predictions as targets, found {predicted.shape} "
                             f"and {target.shape}")
        k = len(self.labels)
        if target.size and (min(target.min(), predicted.min()) < 0
                            or max(target.max(), predicted.max()) >= k):
            raise ValueError(f"expected label ids in [0, {k}), found {target.min()}..."
                             f"{target.max()} and {predicted.min()}...{predicted.max()}")
        np.add.at(self.counts, (target, predicted), 1)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def summary(self) -> dict[str, Any]:
        """Accuracy, per-class and macro/micro precision, recall and F1, and the matrix.

        A class never predicted has precision 0 and a class absent from the targets recall 0
        (scikit-learn's zero_division=0), so neither inflates the macro averages.
        """
        counts = self.counts.astype(np.float64)
        true_positive = np.diag(counts)
        predicted = counts.sum(axis=0)
        actual = counts.sum(axis=1)
        precision = _ratio(true_positive, predicted)
        recall = _ratio(true_positive, actual)
        f1 = _ratio(2 * precision * recall, precision + recall)
        total = counts.sum()
        accuracy = float(true_positive.sum() / total) if total else 0.0
        rows = zip(self.labels, precision, recall, f1, actual, strict=True)
        per_class = {label: {"precision": float(p), "recall": float(r), "f1": float(f),
                             "support": int(s)} for label, p, r, f, s in rows}
        return {
            "accuracy": accuracy,
            "macro_precision": float(precision.mean()),
            "macro_recall": float(recall.mean()),
            "macro_f1": float(f1.mean()),
            # single-label classification: micro precision = micro recall = micro F1 = accuracy
            "micro_f1": accuracy,
            "examples": int(total),
            "per_class": per_class,
            "confusion": {"labels": self.labels, "counts": self.counts.tolist()},
        }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0 where the denominator is 0."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


class _TokenNats(Metric):
    """Sums the `lm` task's negative log-likelihood (nats) and token count over the batches."""

    tasks = ("lm",)

    def __init__(self, settings):
        super().__init__(settings)
        self.nats, self.targets, self.text_bytes = 0.0, 0, 0

    def update(self, scored: Mapping[str, Any]) -> None:
        self.nats += scored["nats"]
        self.targets += scored["targets"]
        self.text_bytes = scored["text_bytes"]


class Perplexity(_TokenNats):
    """exp of the mean loss per token (capped at exp(700), so it stays a finite float)."""

    def compute(self) -> dict[str, Any]:
        return {"perplexity": math.exp(min(self.nats / self.targets, 700.0))}


class BitsPerByte(_TokenNats):
    """The total negative log-likelihood in bits over the UTF-8 bytes of the text: unlike the
    loss per token, comparable across tokenizers."""

    def compute(self) -> dict[str, Any]:
        bits = self.nats / math.log(2) / self.text_bytes if self.text_bytes else float("nan")
        return {"bits_per_byte": bits}


class _ConfusionFigures(Metric):
    """Figures of `ConfusionMatrix.summary` over the `classify` task's batches."""

    tasks = ("classify",)
    figures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings):
        super().__init__(settings)
        self.matrix: ConfusionMatrix | None = None

    def update(self, scored: Mapping[str, Any]) -> None:
        if self.matrix is None:
            self.matrix = ConfusionMatrix(scored["labels"])
        self.matrix.update(scored["target"], scored["predicted"])

    def compute(self) -> dict[str, Any]:
        summary = self.matrix.summary()
        return {name: summary[name] for name in self.figures}


class Accuracy(_ConfusionFigures):
    """The share of texts given their true label."""

    figures = ("accuracy",)


class MacroPrecision(_ConfusionFigures):
    """Precision averaged over labels, each label counting the same."""

    figures = ("macro_precision",)


class MacroRecall(_ConfusionFigures):
    """Recall averaged over labels, each label counting the same."""

    figures = ("macro_recall",)


class MacroF1(_ConfusionFigures):
    """F1 averaged over labels, each label counting the same (rare labels weigh fully)."""

    figures = ("macro_f1",)


class MicroF1(_ConfusionFigures):
    """F1 over all texts pooled; for one label per text it equals accuracy."""

    figures = ("micro_f1",)


class Confusion(_ConfusionFigures):
    """The confusion matrix, per-label precision, recall, F1 and support, and the text count:
    what the classify task's report table and plots show."""

    figures = ("examples", "per_class", "confusion")


@hookimpl
def register_metrics(register):
    register("perplexity", Perplexity)
    register("bits_per_byte", BitsPerByte)
    register("accuracy", Accuracy)
    register("macro_precision", MacroPrecision)
    register("macro_recall", MacroRecall)
    register("macro_f1", MacroF1)
    register("micro_f1", MicroF1)
    register("confusion", Confusion)


def majority_baseline(train_counts: Sequence[int], split_counts: Sequence[int],
                      labels: Sequence[str]) -> dict[str, Any]:
    """What always predicting the train split's most frequent label scores on a split."""
    majority = int(np.argmax(train_counts))
    matrix = ConfusionMatrix(labels)
    matrix.counts[:, majority] = np.asarray(split_counts, dtype=np.int64)
    figures = matrix.summary()
    return {"label": labels[majority], "accuracy": figures["accuracy"],
            "macro_f1": figures["macro_f1"]}


def plot_confusion(path, confusion: dict[str, Any], title: str) -> None:
    """Save the confusion matrix as a heat map with counts, rows true and columns predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, counts = confusion["labels"], np.asarray(confusion["counts"])
    size = max(4.0, 0.6 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = counts.max() / 2 if counts.size else 0
    for (row, col), value in np.ndenumerate(counts):
        ax.text(col, row, f"{value:,}", ha="center", va="center",
                color="white" if value > threshold else "black")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
