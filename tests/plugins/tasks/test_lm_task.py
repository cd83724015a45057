"""The lm task's batches: determined by seed and index, fixed eval windows, whole-split coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.interfaces.task import TaskData
from lmforge.plugins.tasks.lm_task import LanguageModeling


def task_over(tokens: np.ndarray, block_size: int = 8) -> LanguageModeling:
    task = LanguageModeling(LanguageModeling.Settings(block_size=block_size))
    task.block_size = block_size
    task.tokens = {"train": tokens, "val": tokens[:101], "test": tokens[:1]}
    return task


TOKENS = np.random.default_rng(0).integers(0, 500, size=5000).astype(np.uint16)


def test_a_batch_is_a_function_of_seed_and_index_only():
    task = task_over(TOKENS)
    first = task.train_batch(7, 4, seed=3)
    task.train_batch(8, 4, seed=3)  # drawing other batches in between changes nothing
    again = task.train_batch(7, 4, seed=3)
    assert torch.equal(first["input"], again["input"])
    assert not torch.equal(first["input"], task.train_batch(8, 4, seed=3)["input"])
    assert not torch.equal(first["input"], task.train_batch(7, 4, seed=4)["input"])


def test_targets_are_inputs_shifted_by_one():
    batch = task_over(TOKENS).train_batch(0, 3, seed=0)
    assert batch["input"].shape == batch["target"].shape == (3, 8)
    assert batch["input"].dtype == torch.int64
    assert torch.equal(batch["input"][:, 1:], batch["target"][:, :-1])


def test_eval_batches_are_the_same_at_every_evaluation():
    task = task_over(TOKENS)
    first = [b["input"] for b in task.eval_batches("val", 2, limit=3)]
    second = [b["input"] for b in task.eval_batches("val", 2, limit=3)]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_whole_split_windows_predict_every_token_after_the_first_once():
    task = task_over(TOKENS)
    targets = torch.cat([b["target"].flatten() for b in task.eval_batches("val", 4)])
    assert targets.tolist() == TOKENS[1:101].tolist()


def test_an_empty_split_cannot_be_evaluated():
    with pytest.raises(LmforgeError, match="the test split has 1 tokens"):
        list(task_over(TOKENS).eval_batches("test", 2))


def test_lm_is_registered(registry):
    assert registry.get("task", "lm").component is LanguageModeling


class UniformModel(torch.nn.Module):
    """Predicts every token with equal probability."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab_size) + self.anchor


def test_bits_per_byte_of_a_uniform_model_is_log2_of_the_vocabulary(registry, tmp_path):
    task = LanguageModeling(LanguageModeling.Settings(block_size=8))
    metrics = [registry.get("metric", name) for name in task.settings.metrics]
    task.prepare_inference(TaskData(None, None, "", tmp_path, metrics), (), None)
    tokens = np.arange(100) % 50
    figures = task.evaluate_tokens(UniformModel(64), tokens, n_bytes=99, batch_size=4)
    assert list(figures) == ["loss", "perplexity", "bits_per_byte", "tokens", "bytes"]
    assert figures["tokens"] == 99
    assert figures["loss"] == pytest.approx(math.log(64))
    assert figures["bits_per_byte"] == pytest.approx(6.0)
    assert figures["perplexity"] == pytest.approx(64.0)
