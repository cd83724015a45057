"""`lmforge run` end to end on tiny configs: stages, caching, exact resume, eval and generate."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.plugins.tasks.commands import predict_texts
from lmforge.plugins.tasks.lm_task import LanguageModeling
from lmforge.run.checkpoint import complete_checkpoints
from lmforge.run.pipeline import load_run, run

MODELS = {
    "gpt": {"type": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16,
            "dropout": 0.1},
    "lstm": {"type": "lstm", "n_embd": 16, "hidden_size": 24, "n_layer": 2, "dropout": 0.1},
}


def write_config(tmp_path: Path, model: str = "gpt", **trainer) -> Path:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        lines = [f"line {i}: the {'quick' if i % 2 else 'lazy'} fox number {i % 7} jumps."
                 for i in range(400)]
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "name": f"tiny-{model}", "runs_dir": str(tmp_path / "runs"), "seed": 3,
        "data": {"source": {"type": "text", "paths": [str(corpus)], "unit": "line"},
                 "split": {"val": 0.1, "test": 0.1, "leakage_check": False}},
        "tokenizer": {"type": "char"},
        "model": MODELS[model],
        "task": {"type": "lm", "block_size": 16},
        "trainer": {"type": "standard", "batch_size": 4, "lr": 3e-3, "warmup_steps": 2,
                    "max_steps": 12, "eval_every": 6, "eval_batches": 2, "log_every": 1,
                    "checkpoint_every": 4, **trainer},
        "sample": {"prompts": ["line 1"], "max_new_tokens": 8, "seed": 1},
    }
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def quiet() -> Console:
    return Console(quiet=True)


def step_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m and "step" in m}


@pytest.mark.parametrize("model", ["gpt", "lstm"])
def test_run_writes_every_stage_and_then_reuses_them(registry, tmp_path, model, monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    config = write_config(tmp_path, model)
    results = run(str(config), registry, console=quiet())
    run_dir = tmp_path / "runs" / f"tiny-{model}"
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "eval.json", "samples.txt",
                 "plots/loss.png"):
        assert (run_dir / name).exists(), name
    assert math.isfinite(results["eval"]["val"]["bits_per_byte"])
    losses = step_losses(run_dir)
    assert losses[12] < losses[1]
    checkpoints = complete_checkpoints(run_dir)
    assert len(checkpoints) >= 2 and checkpoints[-1].name.endswith("12")
    # scores of other files survive a rerun while they describe the same weights
    scored = json.loads((run_dir / "eval.json").read_text())
    assert scored["val"]["checkpoint"] == checkpoints[-1].name
    scored["file:held-out.txt"] = {"loss": 1.0, "checkpoint": checkpoints[-1].name}
    scored["file:stale.txt"] = {"loss": 2.0, "checkpoint": "step-00000001"}
    (run_dir / "eval.json").write_text(json.dumps(scored))
    again = run(str(config), registry, console=quiet())
    assert again["eval"] == results["eval"]
    assert complete_checkpoints(run_dir) == checkpoints
    kept = json.loads((run_dir / "eval.json").read_text())
    assert set(kept) == {"val", "test", "file:held-out.txt"}
    # the metrics reported do not change what training computes: the training is reused
    fewer = run(str(config), registry, ("task.metrics=[perplexity]",), console=quiet())
    assert fewer["train"] == results["train"] and complete_checkpoints(run_dir) == checkpoints
    assert list(fewer["eval"]["val"]) == ["loss", "perplexity", "tokens", "bytes", "checkpoint"]
    with pytest.raises(LmforgeError, match="holds a lm model, which does not predict labels"):
        predict_texts(str(run_dir), registry, ("a text",))


@pytest.mark.parametrize("model", ["gpt", "lstm"])
def test_interrupted_run_resumes_exactly(registry, tmp_path, model, monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    full = tmp_path / "full"
    part = tmp_path / "part"
    full.mkdir(), part.mkdir()
    run(str(write_config(full, model, grad_accum=2)), registry, console=quiet())

    original = LanguageModeling.train_batch
    interrupt_at = 7 * 2 + 1  # step 7 (0-based), second micro-batch of its accumulation window

    def interrupting(self, index, batch_size, seed):
        if index == interrupt_at and not getattr(self, "_interrupted", False):
            self._interrupted = True
            signal.raise_signal(signal.SIGINT)
        return original(self, index, batch_size, seed)

    monkeypatch.setattr(LanguageModeling, "train_batch", interrupting)
    config = write_config(part, model, grad_accum=2)
    first = run(str(config), registry, console=quiet())
    assert first["train"].get("interrupted")
    monkeypatch.setattr(LanguageModeling, "train_batch", original)
    run(str(config), registry, resume=True, console=quiet())

    full_dir, part_dir = full / "runs" / f"tiny-{model}", part / "runs" / f"tiny-{model}"
    assert step_losses(part_dir) == step_losses(full_dir)
    a = load_run(full_dir, registry).model.state_dict()
    b = load_run(part_dir, registry).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_config_is_refused(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    config = write_config(tmp_path, max_steps=4)
    run(str(config), registry, console=quiet())
    with pytest.raises(LmforgeError, match="config"):
        run(str(config), registry, ("trainer.lr=0.01",), resume=True, console=quiet())


def test_rerun_with_changed_settings_does_not_overwrite_checkpoints(registry, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    config = write_config(tmp_path, max_steps=4)
    run(str(config), registry, console=quiet())
    with pytest.raises(LmforgeError, match="--resume"):
        run(str(config), registry, ("trainer.lr=0.01",), console=quiet())
