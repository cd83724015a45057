"""Next-token sampling in numpy, with the definitions of the torch path
(lmforge.plugins.tasks.generate.sample_next)."""

from __future__ import annotations

import numpy as np


def penalized(logits: np.ndarray, repetition_penalty: float, seen: np.ndarray | None
              ) -> np.ndarray:
    """Logits (V,) as float32 with the repetition penalty applied to the tokens marked in
    `seen` (V,) bool: positive logits divided by it, negative ones multiplied (CTRL)."""
    logits = np.asarray(logits, dtype=np.float32)
    if repetition_penalty == 1.0 or seen is None:
        return logits
    scaled = np.where(logits > 0, logits / np.float32(repetition_penalty),
                      logits * np.float32(repetition_penalty))
    return np.where(seen, scaled, logits)


def next_token_probabilities(logits: np.ndarray, *, temperature: float, top_k: int | None = None,
                             top_p: float | None = None, repetition_penalty: float = 1.0,
                             seen: np.ndarray | None = None) -> np.ndarray:
    """The distribution (V,) a token is drawn from when temperature > 0: the penalized logits
    divided by the temperature, outside the top-k set to -inf, then outside the top-p nucleus
    (the smallest set of most likely tokens whose probabilities reach top_p), then softmax."""
    logits = penalized(logits, repetition_penalty, seen) / np.float32(temperature)
    if top_k is not None and top_k < logits.size:
        kth_largest = np.partition(logits, logits.size - top_k)[logits.size - top_k]
        logits = np.where(logits < kth_largest, np.float32(-np.inf), logits)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-logits, kind="stable")
        probs = _softmax(logits[order])
        # Drop a token once the more likely ones already reach top_p: the first always stays.
        drop = np.empty(logits.size, dtype=bool)
        drop[order] = np.cumsum(probs) - probs >= top_p
        logits = np.where(drop, np.float32(-np.inf), logits)
    return _softmax(logits)


def sample_next(logits: np.ndarray, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, repetition_penalty: float = 1.0,
                seen: np.ndarray | None = None, rng: np.random.Generator | None = None) -> int:
    """One token id from next-token logits (V,): the argmax of the penalized logits at
    temperature 0 (nothing drawn), else a draw from `next_token_probabilities` with `rng`."""
    if temperature == 0:
        return int(np.argmax(penalized(logits, repetition_penalty, seen)))
    probs = next_token_probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                     repetition_penalty=repetition_penalty, seen=seen)
    probs = probs.astype(np.float64)
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(probs.size, p=probs / probs.sum()))


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()
