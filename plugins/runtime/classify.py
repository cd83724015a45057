"""Classifying texts with a bundle's full-sequence graph: padded batches, labels with
probabilities, as `lmforge predict` gives them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError


class Classifier:
    """A loaded classifier bundle's texts -> labels. Texts go through the run's text-rewriting
    preprocessors, are encoded and cut to the task's max_length (an empty text becomes one eos,
    as in training), and run in batches of alike lengths padded on the right with pad_mask True
    on padding."""

    def __init__(self, bundle):
        manifest = bundle.manifest
        if manifest.task != "classify":
            raise LmforgeError(f"{bundle.path} holds a {manifest.task} model, which does not "
                               f"predict labels; use `lmforge generate`")
        self.bundle = bundle
        self.labels = list(manifest.labels)
        self.session = bundle.session("model")
        self.max_length = manifest.limits.max_length or manifest.limits.context_length
        tokenizer = bundle.tokenizer
        self.pad_id = (manifest.tokenizer.pad_id if manifest.tokenizer.pad_id is not None
                       else tokenizer.pad_id)
        self.eos_id = manifest.tokenizer.eos_id

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each (preprocessed) text, cut to max_length."""
        encoded = self.bundle.tokenizer.encode_batch(texts)
        return [np.asarray(ids[:self.max_length] or [self.eos_id], dtype=np.int64)
                for ids in encoded]

    def probabilities(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """Label probabilities (len(ids), labels) of one padded batch."""
        lengths = np.array([len(row) for row in ids])
        rows = np.full((len(ids), lengths.max()), self.pad_id, dtype=np.int64)
        for i, row in enumerate(ids):
            rows[i, :len(row)] = row
        pad_mask = np.arange(rows.shape[1])[None, :] >= lengths[:, None]
        [logits] = self.session.run(["logits"], {"input_ids": rows, "pad_mask": pad_mask})
        logits = logits.astype(np.float32)
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)

    def results(self, probabilities: np.ndarray) -> list[dict[str, Any]]:
        return [{"label": self.labels[int(row.argmax())],
                 "probabilities": dict(zip(self.labels, row.tolist(), strict=True))}
                for row in probabilities]

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """The most probable label of each text, and every label's probability."""
        return self.predict_preprocessed(self.bundle.preprocess(texts), batch_size)

    def predict_preprocessed(self, texts: Sequence[str], batch_size: int = 64
                             ) -> list[dict[str, Any]]:
        """`predict` for texts already through the bundle's preprocessors."""
        if batch_size < 1:
            raise LmforgeError(f"batch size must be >= 1, found {batch_size}")
        ids = self.encode(texts)
        results: list[dict[str, Any]] = [{}] * len(ids)
        order = np.argsort([len(row) for row in ids], kind="stable")
        for start in range(0, len(order), batch_size):
            picks = order[start:start + batch_size]
            batch = self.results(self.probabilities([ids[i] for i in picks]))
            for i, result in zip(picks, batch, strict=True):
                results[i] = result
        return results
