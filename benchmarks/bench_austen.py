"""Quality against nanoGPT: validation loss of austen-char.yaml at 60, 90 and 300 s of training."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console

from lmforge.run.pipeline import run

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "austen-char.yaml"
SECONDS = int(os.environ.get("LMFORGE_BENCH_SECONDS", "300"))
# nanoGPT's train.py with the same model, data split and batch, measured on this kind of machine
PEER = {74: 1.729, 86: 1.698, 100: 1.679}
TARGET = 1.70


def val_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(training seconds, validation loss) of every evaluation, in order."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["elapsed"], m["val_loss"]) for m in lines if m.get("event") == "eval"]


def test_austen_char_validation_loss_against_time(austen, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    run(str(CONFIG), (f"runs_dir={tmp_path}", f"data.source.paths=[{austen}]",
                      f"trainer.max_time={SECONDS}"), console=Console(quiet=True))
    curve = val_curve(tmp_path / "austen-char")
    reached = next((seconds for seconds, loss in curve if loss <= TARGET), None)
    print("\nausten-char val loss (nats/char) by training time, evaluated every 250 steps:")
    for limit in (60, 90, SECONDS):
        before = [loss for seconds, loss in curve if seconds <= limit]
        print(f"  <= {limit:>3} s: {min(before):.3f}" if before else f"  <= {limit} s: no eval")
    print(f"  first eval at or under {TARGET}: "
          + (f"{reached:.0f} s" if reached is not None else "not reached"))
    print("  nanoGPT peer: " + ", ".join(f"{v} at {k} s" for k, v in PEER.items()))
    assert curve, "the run logged no evaluation"
