"""Sentiment quality: the shipped textcnn, lstm and transformer configs on the movie-review data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from lmforge.run.pipeline import run

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
MODELS = ("cnn", "lstm", "transformer")
# the bar on the test split: accuracy and macro-F1
TARGET = 0.77
SECONDS = os.environ.get("LMFORGE_BENCH_SECONDS")  # shorter runs for a quick look


@pytest.mark.parametrize("model", MODELS)
def test_sentiment_test_split(vader, tmp_path, monkeypatch, model):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    overrides = [f"runs_dir={tmp_path}", f"data.source.paths=[{vader}]"]
    if SECONDS:
        overrides.append(f"trainer.max_time={SECONDS}")
    results = run(str(CONFIGS / f"sentiment-{model}.yaml"), tuple(overrides),
                  console=Console(quiet=True))
    train, test = results["train"], results["eval"]["test"]
    baseline = test["majority_baseline"]
    print(f"\nsentiment-{model}: test accuracy {test['accuracy']:.4f}, macro-F1 "
          f"{test['macro_f1']:.4f} (majority baseline {baseline['accuracy']:.4f}); "
          f"{train['train_seconds']:.0f} s of training, {train['steps']} steps "
          f"({train['stopped']}), weights of step {train['weights_from_step']}, "
          f"{train['tokens_per_s']:,.0f} tokens/s")
    assert test["examples"] > 1000
