"""Next-token sampling in numpy, with the definitions of the torch path
(lmforge.plugins.tasks.generate.sample_next), for one row of logits or many sampled alike."""

from __future__ import annotations

import numpy as np


def penalized(logits: np.ndarray, repetition_penalty: float, seen: np.ndarray | None
              ) -> np.ndarray:
    """Logits (..., V) as float32 with the repetition penalty applied to the tokens marked in
    `seen` (bool, the same shape): positive logits divided by it, negative ones multiplied
    (CTRL)."""
    logits = np.asarray(logits, dtype=np.float32)
    if repetition_penalty == 1.0 or seen is None:
        return logits
    scaled = np.where(logits > 0, logits / np.float32(repetition_penalty),
                      logits * np.float32(repetition_penalty))
    return np.where(seen, scaled, logits)


def next_token_probabilities(logits: np.ndarray, *, temperature: float, top_k: int | None = None,
                             top_p: float | None = None, repetition_penalty: float = 1.0,
                             seen: np.ndarray | None = None) -> np.ndarray:
    """The distributions (..., V) tokens are drawn from when temperature > 0, one per row of
    `logits`: the penalized logits divided by the temperature, outside the top-k set to -inf,
    then outside the top-p nucleus (the smallest set of most likely tokens whose probabilities
    reach top_p), then softmax."""
    logits = penalized(logits, repetition_penalty, seen) / np.float32(temperature)
    size = logits.shape[-1]
    if top_k is not None and top_k < size:
        kth_largest = np.partition(logits, size - top_k, axis=-1)[..., size - top_k, None]
        logits = np.where(logits < kth_largest, np.float32(-np.inf), logits)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")
        probs = _softmax(np.take_along_axis(logits, order, axis=-1))
        # Drop a token once the more likely ones already reach top_p: the first always stays.
        drop = np.empty(logits.shape, dtype=bool)
        np.put_along_axis(drop, order, np.cumsum(probs, axis=-1) - probs >= top_p, axis=-1)
        logits = np.where(drop, np.float32(-np.inf), logits)
    return _softmax(logits)


def sample_rows(logits: np.ndarray, rngs: list[np.random.Generator], *, temperature: float,
                top_k: int | None = None, top_p: float | None = None,
                repetition_penalty: float = 1.0, seen: np.ndarray | None = None) -> np.ndarray:
    """One token id per row of `logits` (n, V), all rows sampled with the same settings, row i
    drawing with `rngs[i]`: at temperature 0 the argmax of the penalized logits (nothing
    drawn), else a draw from `next_token_probabilities` by inverting its cumulative sum at one
    uniform number per row."""
    if temperature == 0:
        return np.argmax(penalized(logits, repetition_penalty, seen), axis=-1)
    probs = next_token_probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                     repetition_penalty=repetition_penalty, seen=seen)
    cumulative = np.cumsum(probs, axis=-1, dtype=np.float64)
    points = np.array([rng.random() for rng in rngs]) * cumulative[:, -1]
    drawn = (cumulative <= points[:, None]).sum(axis=-1)
    # a point rounded up onto the total would index past the last token
    return np.minimum(drawn, probs.shape[-1] - 1)


def sample_next(logits: np.ndarray, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, repetition_penalty: float = 1.0,
                seen: np.ndarray | None = None, rng: np.random.Generator | None = None) -> int:
    """One token id from next-token logits (V,): `sample_rows` for one row."""
    rng = rng if rng is not None else np.random.default_rng()
    return int(sample_rows(np.asarray(logits)[None], [rng], temperature=temperature,
                           top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                           seen=None if seen is None else seen[None])[0])


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)
