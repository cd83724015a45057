"""Training tokens/s: lmforge's trainer against a plain PyTorch loop, and fused kernels against
the PyTorch reference path end to end."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge import ops
from lmforge.host.manager import load_plugins
from lmforge.interfaces.model import ModelSpec
from lmforge.interfaces.trainer import TrainContext
from lmforge.plugins.tasks.lm_task import LanguageModeling

VOCAB = 2048
BLOCK = 128
BATCH = 16
STEPS = 60
ROUNDS = 3
MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": BLOCK, "dropout": 0.0}
# The shipped configs' models: demo.yaml's gpt and lstm-char.yaml's lstm (batch as configured).
END_TO_END = {
    "gpt": ({"type": "gpt", **MODEL}, BATCH, 40),
    "lstm": ({"type": "lstm", "n_embd": 128, "hidden_size": 512, "n_layer": 2, "dropout": 0.0},
             32, 12),
}


class SyntheticLM(LanguageModeling):
    """The lm task over a fixed random token array (no data stage, same batch code)."""

    def __init__(self, tokens: np.ndarray):
        super().__init__(LanguageModeling.Settings(block_size=BLOCK))
        self.block_size = BLOCK
        self.tokens = {"train": tokens, "val": tokens[: BLOCK * 64]}


def build_model(registry, seed: int = 0, settings: dict | None = None):
    torch.manual_seed(seed)
    spec = ModelSpec(task="lm", vocab_size=VOCAB, pad_id=1)
    settings = dict(settings or {"type": "gpt", **MODEL})
    return registry.get("model", settings.pop("type")).create(settings).build(spec)


def plain_loop(registry, task: SyntheticLM, fused: bool) -> float:
    """nanoGPT's loop: AdamW with decay on matrices only, a constant lr, gradient clipping."""
    model = build_model(registry)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99),
                                  **({"fused": True} if fused else {"foreach": True}))
    model.train()
    start = time.perf_counter()
    for step in range(STEPS):
        batch = task.train_batch(step, BATCH, 0)
        logits = model(batch["input"])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch["target"].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    loss.item()
    return STEPS * BATCH * BLOCK / (time.perf_counter() - start)


def lmforge_trainer(registry, task: SyntheticLM, run_dir, model_settings: dict | None = None,
                    batch: int = BATCH, steps: int = STEPS) -> float:
    model = build_model(registry, settings=model_settings)
    trainer = registry.get("trainer", "standard").create({
        "batch_size": batch, "lr": 1e-3, "warmup_steps": 0, "schedule": "constant",
        "max_steps": steps, "eval_every": steps * 10, "eval_batches": 1,
        "checkpoint_every": None, "log_every": 10})
    summary = trainer.fit(TrainContext(run_dir=run_dir, model=model, task=task, seed=0,
                                       config_hash="bench", tokenizer_hash="bench",
                                       model_info={"flops_per_token": model.flops_per_token()}))
    return summary["tokens_per_s"]


def test_trainer_overhead_against_plain_loop(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    registry = load_plugins({"LMFORGE_LOAD_PLUGINS": ""}).registry
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=200_000).astype(np.uint16)
    task = SyntheticLM(tokens)
    rates = {"plain (foreach AdamW)": [], "plain (fused AdamW)": [], "lmforge trainer": []}
    for round_index in range(ROUNDS):  # interleaved, so machine noise hits all alike
        rates["plain (foreach AdamW)"].append(plain_loop(registry, task, fused=False))
        rates["plain (fused AdamW)"].append(plain_loop(registry, task, fused=True))
        run_dir = tmp_path / f"round-{round_index}"
        rates["lmforge trainer"].append(lmforge_trainer(registry, task, run_dir))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    baseline = medians["plain (foreach AdamW)"]
    print(f"\ngpt 4L/4H/128d T{BLOCK} B{BATCH}, {torch.get_num_threads()} threads, medians of "
          f"{ROUNDS} interleaved rounds of {STEPS} steps:")
    for name, rate in medians.items():
        print(f"  {name:<22} {rate:>9,.0f} tokens/s  {rate / baseline:.3f}x")
    assert all(rate > 0 for rate in medians.values())


@pytest.mark.parametrize("model", END_TO_END)
def test_fused_kernels_end_to_end(tmp_path, monkeypatch, model):
    """The shipped model trained by the lmforge trainer with `kernels: reference` and `fused`."""
    op = "attention" if model == "gpt" else "lstm"
    reason = ops.why_not_fused(op)
    if reason is not None:
        pytest.skip(f"the fused {op} kernel is {reason}")
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    registry = load_plugins({"LMFORGE_LOAD_PLUGINS": ""}).registry
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=200_000).astype(np.uint16)
    task = SyntheticLM(tokens)
    settings, batch, steps = END_TO_END[model]
    rates = {"reference": [], "fused": []}
    for round_index in range(ROUNDS):
        for backend in rates:
            run_dir = tmp_path / f"{backend}-{round_index}"
            rates[backend].append(lmforge_trainer(registry, task, run_dir,
                                                  {**settings, "kernels": backend}, batch, steps))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\n{model} end to end, T{BLOCK} B{batch}, {torch.get_num_threads()} threads, medians "
          f"of {ROUNDS} interleaved rounds of {steps} steps:")
    for name, rate in medians.items():
        print(f"  {name:<10} {rate:>9,.0f} tokens/s  {rate / medians['reference']:.3f}x")
    assert all(rate > 0 for rate in medians.values())
