"""The standard trainer on a tiny task: learning, checkpoints, exact resume after Ctrl-C, limits."""

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.interfaces.model import ModelSpec
from lmforge.interfaces.task import Task
from lmforge.interfaces.trainer import TrainContext
from lmforge.plugins.training import state
from lmforge.plugins.training.callbacks import LossPlot, ProgressBar
from lmforge.plugins.training.optim import lr_factor, param_groups
from lmforge.plugins.training.state import (
    capture_rng_state,
    prune_checkpoints,
    restore_rng_state,
)
from lmforge.plugins.training.trainer import StandardTrainer
from lmforge.run.checkpoint import (
    check_compatible,
    checkpoint_dir,
    complete_checkpoints,
    load_trainer_state,
    read_meta,
    save_checkpoint,
)
from lmforge.settings import NoSettings

VOCAB = 16
CONTEXT = 12


class WindowTask(Task):
    """Next-token windows of a fixed token stream with structure (mostly t -> 3t + 1 mod V)."""

    def __init__(self, interrupt_at=None, random_val=False):
        super().__init__(NoSettings())
        rng = np.random.default_rng(123)
        stream = [0]
        for noise in rng.random(4000):
            stream.append((3 * stream[-1] + 1) % VOCAB if noise < 0.8 else int(noise * 97) % VOCAB)
        self.stream = np.array(stream, dtype=np.int64)
        # Validation: the stream's second half (training draws windows from the whole stream,
        # which is fine here), or random tokens the model can only get worse at.
        self.val = rng.integers(0, VOCAB, len(stream)) if random_val else self.stream[2000:]
        self.interrupt_at = interrupt_at

    def setup(self, data, context_length):
        pass

    def model_spec(self):
        return ModelSpec(task="lm", vocab_size=VOCAB)

    def _windows(self, stream, starts):
        windows = torch.from_numpy(np.stack([stream[s:s + CONTEXT + 1] for s in starts]))
        return {"input": windows[:, :-1], "target": windows[:, 1:]}

    def train_batch(self, index, batch_size, seed):
        if index == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C arriving in the middle of a window
        rng = np.random.default_rng([seed, index])
        return self._windows(self.stream, rng.integers(0, len(self.stream) - CONTEXT - 1,
                                                       batch_size))

    def eval_batches(self, split, batch_size, limit=None):
        for i in range(limit or 4):
            yield self._windows(self.val, range(i * batch_size, (i + 1) * batch_size))

    def loss(self, model, batch):
        logits = model(batch["input"])
        return F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten()), \
            batch["target"].numel()

    def evaluate(self, model, split, batch_size):
        return {}


class TinyLM(nn.Module):
    """Embedding, dropout (so the RNG matters), a norm and a tied output layer."""

    def __init__(self, dim=24):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.drop = nn.Dropout(0.3)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        return self.head(self.norm(torch.tanh(self.mix(self.drop(self.embed(idx))))))

    def flops_per_token(self):
        return 2 * sum(p.numel() for p in self.parameters())


@pytest.fixture(autouse=True, scope="module")
def _peak_cache(tmp_path_factory):
    # One probe for the whole module instead of one per run.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def settings(**overrides):
    base = dict(batch_size=8, lr=1e-2, warmup_steps=2, max_steps=10, eval_every=5,
                eval_batches=2, checkpoint_every=None, log_every=1, device="cpu", threads=1)
    return StandardTrainer.Settings(**{**base, **overrides})


def fit(run_dir, task=None, model_seed=0, resume=False, config_hash="c1", **overrides):
    torch.manual_seed(model_seed)
    model = TinyLM()
    context = TrainContext(run_dir=run_dir, model=model, task=task or WindowTask(), seed=7,
                           config_hash=config_hash, tokenizer_hash="t1", resume=resume,
                           model_info={"name": "tiny"}, kernels="reference",
                           callbacks=[LossPlot(NoSettings()), ProgressBar(NoSettings())])
    return StandardTrainer(settings(**overrides)).fit(context), model


def metrics(run_dir, event):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_a_short_run_learns_and_writes_the_run_directory(tmp_path):
    summary, _ = fit(tmp_path, max_steps=30, eval_every=10, log_every=5)
    train = metrics(tmp_path, "train")
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    assert [r["step"] for r in metrics(tmp_path, "eval")] == [10, 20, 30]
    run = metrics(tmp_path, "run")[0]
    assert run["kernels"] == "reference" and run["parameters"] == 24 * 16 + 24 * 24 + 24 + 48
    assert train[-1]["mfu"] > 0 and train[-1]["tokens"] == 30 * 8 * CONTEXT
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 1000
    assert summary["stopped"] == "max_steps" and summary["steps"] == 30
    assert summary["best_val_loss"] <= summary["final_val_loss"]
    assert summary["checkpoint"].endswith("step-00000030")
    assert read_meta(complete_checkpoints(tmp_path)[-1])["val_loss"] == summary["final_val_loss"]


def test_ctrl_c_inside_an_accumulation_window_resumes_bit_identically(tmp_path):
    common = dict(grad_accum=2, max_steps=9, eval_every=4, checkpoint_every=3)
    _, straight = fit(tmp_path / "a", **common)

    # Interrupted in step 6's second micro-batch: steps 1-5 complete, 6 is dropped.
    handler = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN in a background job
    summary, _ = fit(tmp_path / "b", task=WindowTask(interrupt_at=5 * 2 + 1), **common)
    assert summary["interrupted"] and summary["checkpoint"].endswith("step-00000005")
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back
    saved = complete_checkpoints(tmp_path / "b")[-1]
    assert load_trainer_state(saved)["micro_batch_index"] == 10 and not read_meta(saved)["final"]

    summary, resumed = fit(tmp_path / "b", model_seed=1, resume=True, **common)
    assert summary["steps"] == 9 and not summary["interrupted"]
    assert read_meta(complete_checkpoints(tmp_path / "b")[-1])["summary"]["steps"] == 9
    losses = {run: [(r["step"], r["loss"]) for r in metrics(tmp_path / run, "train")]
              for run in ("a", "b")}
    assert losses["a"] == losses["b"] and [s for s, _ in losses["a"]] == list(range(1, 10))
    val_losses = {run: [(r["step"], r["val_loss"]) for r in metrics(tmp_path / run, "eval")]
                  for run in ("a", "b")}
    assert val_losses["a"] == val_losses["b"] and len(val_losses["a"]) == 3
    straight_state, resumed_state = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(straight_state[k], resumed_state[k]) for k in straight_state)


def test_resuming_with_another_config_is_refused(tmp_path):
    fit(tmp_path, max_steps=3)
    with pytest.raises(LmforgeError, match=r"step-00000003.*config hash 'c1'.*'c2'.*changed"):
        fit(tmp_path, resume=True, config_hash="c2", max_steps=3)


def test_existing_checkpoints_are_never_overwritten_without_resume(tmp_path):
    fit(tmp_path, max_steps=3)
    with pytest.raises(LmforgeError, match=r"already has 1 complete checkpoint.*--resume"):
        fit(tmp_path, max_steps=3)


def test_resuming_a_finished_run_adds_nothing(tmp_path):
    # The last periodic checkpoint comes before the final log line and evaluation.
    common = dict(max_steps=4, eval_every=3, log_every=3, checkpoint_every=4)
    fit(tmp_path, **common)
    before = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
              if r["event"] != "run"]
    summary, _ = fit(tmp_path, resume=True, **common)
    after = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if r["event"] != "run"]
    assert before == after and summary["steps"] == 4


def test_checkpoints_are_pruned_and_the_last_one_is_marked_final(tmp_path):
    # Step 8 is saved by checkpoint_every, after its log line and evaluation: then only its
    # meta is marked final.
    summary, _ = fit(tmp_path, max_steps=8, checkpoint_every=2, log_every=2, eval_every=2)
    checkpoints = complete_checkpoints(tmp_path)
    assert [p.name for p in checkpoints] == ["step-00000006", "step-00000008"]
    assert not read_meta(checkpoints[0])["final"]
    meta = read_meta(checkpoints[1])
    assert meta["final"] and meta["summary"] == json.loads(json.dumps(summary))


def test_early_stopping_on_a_validation_loss_that_gets_worse(tmp_path):
    # Validation targets are random: the more the model learns the stream, the worse it does.
    summary, _ = fit(tmp_path, task=WindowTask(random_val=True), max_steps=200, eval_every=3,
                     early_stopping_patience=2)
    assert summary["stopped"] == "early_stopping" and summary["steps"] < 200


def test_restore_best_ends_with_the_best_evaluation_weights(tmp_path):
    summary, model = fit(tmp_path, task=WindowTask(random_val=True), max_steps=30, eval_every=3,
                         restore_best=True)
    evals = metrics(tmp_path, "eval")
    best = min(evals, key=lambda e: e["val_loss"])
    assert best["step"] < 30 and summary["weights_from_step"] == best["step"]
    final = complete_checkpoints(tmp_path)[-1]
    assert read_meta(final)["summary"]["weights_from_step"] == best["step"]
    # the final weights score the best loss again
    task = WindowTask(random_val=True)
    model.eval()
    with torch.no_grad():
        losses = [task.loss(model, batch) for batch in task.eval_batches("val", 8, limit=2)]
    val_loss = sum(loss.item() * n for loss, n in losses) / sum(n for _, n in losses)
    assert val_loss == pytest.approx(best["val_loss"], rel=1e-5)
    assert read_meta(tmp_path / "best")["step"] == best["step"]


def test_without_restore_best_the_last_weights_stay(tmp_path):
    summary, _ = fit(tmp_path, task=WindowTask(random_val=True), max_steps=12, eval_every=3)
    assert summary["weights_from_step"] == 12 and not (tmp_path / "best").exists()


class FakeClock:
    """A perf_counter that ticks 1 ms per reading, and that evaluations push forward an hour:
    what the trainer counts is decided by the code, not by the machine's speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


class SlowEvalTask(WindowTask):
    clock: FakeClock

    def eval_batches(self, split, batch_size, limit=None):
        self.clock.now += 3600.0
        yield from super().eval_batches(split, batch_size, limit)


def test_max_time_counts_training_seconds_only(tmp_path, monkeypatch):
    task = SlowEvalTask()
    task.clock = FakeClock()
    monkeypatch.setattr(state.time, "perf_counter", task.clock)
    summary, _ = fit(tmp_path, task=task, max_steps=None, max_time=0.3,
                     schedule="constant", eval_every=10_000, log_every=50)
    assert summary["stopped"] == "max_time"
    assert 0.3 <= summary["train_seconds"] < 1.0
    # The final evaluation (an hour on the clock) is not in the seconds the checkpoint carries.
    saved = load_trainer_state(complete_checkpoints(tmp_path)[-1])["train_seconds"]
    assert saved == summary["train_seconds"]


def test_bf16_autocast_trains(tmp_path):
    summary, _ = fit(tmp_path, precision="bf16", max_steps=20, log_every=10)
    train = metrics(tmp_path, "train")
    assert summary["steps"] == 20 and train[1]["loss"] < train[0]["loss"]


def save(run_dir, step):
    return save_checkpoint(run_dir, step, TinyLM(), {"step": step},
                           {"config_hash": "c", "tokenizer_hash": "t"})


def test_prune_keeps_the_newest_and_clears_leftovers(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step)
    checkpoint_dir(tmp_path, 0).mkdir()
    (tmp_path / "checkpoints" / ".step-00000005.tmp-999").mkdir()
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["step-00000000", "step-00000001", "step-00000002"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000003", "step-00000004"]
    with pytest.raises(LmforgeError, match="keep_last: expected at least 2.*found 1"):
        prune_checkpoints(tmp_path, keep_last=1)


def test_a_changed_config_or_tokenizer_is_refused(tmp_path):
    folder = save(tmp_path, 5)
    meta = read_meta(folder)
    check_compatible(meta, "c", "t", folder)
    with pytest.raises(LmforgeError, match=r"step-00000005: .*config hash 'c', but the config "
                                           r"now hashes to 'other'.*changed since"):
        check_compatible(meta, "other", "t", folder)
    with pytest.raises(LmforgeError, match=r"step 5: .*tokenizer hash 't'.*tokenizer changed"):
        check_compatible(meta, "c", "x")


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    torch.save(state, tmp_path / "rng.pt")
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_schedule_values():
    cosine = settings(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_factor(cosine, 0) == pytest.approx(0.1)
    assert lr_factor(cosine, 9) == pytest.approx(1.0)
    assert lr_factor(cosine, 60) == pytest.approx(0.55)
    assert lr_factor(cosine, 110) == pytest.approx(0.1)
    linear = cosine.model_copy(update={"schedule": "linear"})
    assert lr_factor(linear, 35) == pytest.approx(1 - 0.9 * 0.25)
    constant = settings(schedule="constant", warmup_steps=4)
    assert [lr_factor(constant, s) for s in (0, 3, 500)] == [0.25, 1.0, 1.0]


def test_no_weight_decay_on_biases_and_norms():
    model = TinyLM()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["embed.weight", "mix.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["mix.bias", "norm.bias",
                                                                 "norm.weight"]


@pytest.mark.parametrize("overrides, message", [
    ({"max_steps": None}, "set max_steps, max_time or both"),
    ({"max_steps": None, "max_time": 60.0}, "schedule cosine decays over max_steps"),
    ({"warmup_steps": 10}, "warmup_steps must be below max_steps; found warmup_steps=10"),
    ({"keep_last": 1}, "greater than or equal to 2"),
])
def test_settings_are_validated(overrides, message):
    with pytest.raises(ValidationError, match=message):
        settings(**overrides)


def test_standard_is_registered(registry):
    entry = registry.get("trainer", "standard")
    assert entry.component is StandardTrainer and entry.settings is StandardTrainer.Settings
