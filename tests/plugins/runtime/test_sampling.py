"""The runtime's numpy sampling against the torch path's definitions."""

import numpy as np
import pytest
import torch

from lmforge.plugins.runtime.sampling import (
    next_token_probabilities,
    sample_next,
    sample_rows,
)
from lmforge.plugins.tasks import generate as torch_generate

CASES = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.6),
    dict(temperature=0.9, top_k=12, top_p=0.8),
    dict(temperature=1.0, top_k=3, repetition_penalty=1.8),
    dict(temperature=0.5, top_p=0.95, repetition_penalty=0.7),
    dict(temperature=2.0, top_k=1),
    dict(temperature=1.0, top_p=1e-6),
]


def torch_probabilities(monkeypatch, logits, seen, sampling):
    """The distribution the torch path draws from, caught at torch.multinomial."""
    caught = []

    def multinomial(probs, n, generator=None):
        caught.append(probs.clone())
        return torch.zeros(1, dtype=torch.long)

    monkeypatch.setattr(torch, "multinomial", multinomial)
    torch_generate.sample_next(torch.from_numpy(logits),
                               seen=None if seen is None else torch.from_numpy(seen), **sampling)
    [probs] = caught
    return probs.numpy()


@pytest.mark.parametrize("sampling", CASES)
def test_probabilities_and_masks_match_the_torch_path(monkeypatch, sampling):
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, size=64).astype(np.float32)
    seen = rng.random(64) < 0.3
    expected = torch_probabilities(monkeypatch, logits, seen, sampling)
    found = next_token_probabilities(logits, seen=seen, **sampling)
    np.testing.assert_array_equal(found > 0, expected > 0)
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("penalty", [1.0, 1.5, 0.5])
def test_greedy_is_the_torch_path_argmax(penalty):
    rng = np.random.default_rng(3)
    for _ in range(20):
        logits = rng.normal(0, 2, size=50).astype(np.float32)
        seen = rng.random(50) < 0.5
        expected = torch_generate.sample_next(torch.from_numpy(logits), temperature=0,
                                              repetition_penalty=penalty,
                                              seen=torch.from_numpy(seen))
        assert sample_next(logits, temperature=0, repetition_penalty=penalty,
                           seen=seen) == expected


def test_top_k_keeps_ties_at_the_kth_logit_like_the_torch_path(monkeypatch):
    logits = np.array([3.0, 1.0, 2.0, 2.0, 0.5], dtype=np.float32)
    expected = torch_probabilities(monkeypatch, logits, None, dict(temperature=1.0, top_k=2))
    found = next_token_probabilities(logits, temperature=1.0, top_k=2)
    assert list(np.flatnonzero(found)) == list(np.flatnonzero(expected)) == [0, 2, 3]


def test_a_seed_repeats_its_draws_and_draws_stay_inside_the_nucleus():
    logits = np.linspace(-2, 2, 30).astype(np.float32)
    sampling = dict(temperature=1.0, top_k=10, top_p=0.7)
    allowed = set(np.flatnonzero(next_token_probabilities(logits, **sampling)))
    first = [sample_next(logits, rng=np.random.default_rng(5), **sampling) for _ in range(3)]
    assert len(set(first)) == 1
    rng = np.random.default_rng(11)
    draws = {sample_next(logits, rng=rng, **sampling) for _ in range(400)}
    assert draws == allowed  # every kept token is drawn, no dropped one ever is


@pytest.mark.parametrize("sampling", CASES)
def test_rows_sampled_together_are_each_row_sampled_alone(sampling):
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, size=(5, 64)).astype(np.float32)
    seen = rng.random((5, 64)) < 0.3
    together = next_token_probabilities(logits, seen=seen, **sampling)
    for row in range(5):
        alone = next_token_probabilities(logits[row], seen=seen[row], **sampling)
        np.testing.assert_array_equal(together[row], alone)
    drawn = sample_rows(logits, [np.random.default_rng(seed) for seed in range(5)], seen=seen,
                        **sampling)
    for row in range(5):
        assert drawn[row] == sample_next(logits[row], seen=seen[row],
                                         rng=np.random.default_rng(row), **sampling)


def test_draws_follow_the_distribution():
    logits = np.log(np.array([0.5, 0.0, 0.3, 0.2], dtype=np.float32))
    rng = np.random.default_rng(2)
    drawn = sample_rows(np.tile(logits, (20_000, 1)), [rng] * 20_000, temperature=1.0)
    frequencies = np.bincount(drawn, minlength=4) / drawn.size
    np.testing.assert_allclose(frequencies, [0.5, 0.0, 0.3, 0.2], atol=0.015)
