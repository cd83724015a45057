"""Built-in trainer `standard`: AdamW with warmup and decay, checkpoints, exact resume, metrics."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from rich.console import Console
from torch import nn

from lmforge import hookimpl
from lmforge.errors import LmforgeError
from lmforge.interfaces.trainer import TrainContext, Trainer
from lmforge.plugins.training.peak import peak_flops
from lmforge.plugins.training.trainer_log import ProgressBar, plot_losses
from lmforge.run.checkpoint import (
    best_weights,
    capture_rng_state,
    check_compatible,
    checkpoint_dir,
    checkpoint_step,
    complete_checkpoints,
    latest_checkpoint,
    load_model_weights,
    load_trainer_state,
    prune_checkpoints,
    read_meta,
    restore_rng_state,
    save_best_weights,
    save_checkpoint,
    update_meta,
)
from lmforge.run.folder import METRICS_FILE, MetricsLog
from lmforge.settings import Settings as ComponentSettings

STATE_FORMAT = 1


class StandardTrainer(Trainer):
    """AdamW on micro-batches `task.train_batch(step * grad_accum + micro)`, with warmup then a
    cosine, linear or constant learning rate, gradient clipping and optional bf16 autocast.

    Weight decay applies to weights of two or more dimensions only (not to biases or norms).
    Validation loss is measured every `eval_every` steps and at the end (target-weighted mean
    over `eval_batches` batches); `early_stopping_patience` stops after that many evaluations
    without improvement. Checkpoints go to `checkpoints/step-N/` every `checkpoint_every` steps,
    at the end and on Ctrl-C, keeping the newest `keep_last`; `resume` continues from the latest
    one exactly (same batches, same dropout masks, same weights as an uninterrupted run).

    A first Ctrl-C drops the unfinished accumulation window, saves the last completed step and
    returns; a second one stops at once. `max_time` counts training seconds only: evaluation,
    checkpoints and plots are excluded, as in nanoGPT's timings, and the count carries over a
    resume. Training RNG (dropout) is seeded from the run seed; evaluation leaves it untouched.
    An interrupted step rewinds torch's generators to the step's start (snapshotted each step);
    Python's and NumPy's are saved as they are, since batches never draw from them.
    Writes `metrics.jsonl` (a `run` line per session, then `train` and `eval` lines) and
    `plots/loss.png` in the run directory. With `restore_best`, each better validation loss
    saves the weights to `best/`, and the final checkpoint holds those weights. MFU is 3 x the
    model's forward FLOPs per token x tokens/s over the machine's matmul peak measured by a
    short probe (lmforge.plugins.training.peak).
    """

    class Settings(ComponentSettings):
        batch_size: int = Field(16, ge=1, description="sequences per micro-batch")
        grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
        lr: float = Field(1e-3, gt=0.0, description="peak learning rate")
        min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0,
                                    description="final learning rate as a share of lr "
                                                "(cosine and linear schedules)")
        weight_decay: float = Field(0.1, ge=0.0,
                                    description="AdamW decay of weights with 2+ dimensions")
        beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW first-moment decay")
        beta2: float = Field(0.99, ge=0.0, lt=1.0, description="AdamW second-moment decay")
        warmup_steps: int = Field(100, ge=0, description="steps of linear warmup")
        schedule: Literal["cosine", "linear", "constant"] = Field(
            "cosine", description="learning rate after warmup: decays to min_lr_ratio * lr "
                                  "at max_steps (cosine, linear) or stays at lr (constant)")
        max_steps: int | None = Field(2000, ge=1, description="optimizer steps to train")
        max_time: float | None = Field(None, gt=0.0,
                                       description="seconds of training (evaluation and "
                                                   "checkpoints excluded); stops at the "
                                                   "first of max_steps and max_time")
        grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm; null: off")
        precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast")
        eval_every: int = Field(250, ge=1, description="steps between validation losses")
        eval_batches: int = Field(20, ge=1, description="validation batches per evaluation")
        early_stopping_patience: int | None = Field(
            None, ge=1, description="stop after this many evaluations without a better "
                                    "validation loss; null: never")
        restore_best: bool = Field(
            False, description="end with the weights of the evaluation with the lowest "
                               "validation loss (kept in best/ as training goes), not the last")
        checkpoint_every: int | None = Field(500, ge=1,
                                             description="steps between checkpoints; null: only "
                                                         "at the end and on Ctrl-C")
        keep_last: int = Field(2, ge=2, description="complete checkpoints kept (at least 2)")
        log_every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
        device: Literal["auto", "cpu", "cuda"] = Field("auto",
                                                       description="auto: cuda when available")
        threads: int | None = Field(None, ge=1, description="torch CPU threads; null: torch's "
                                                            "default")

        @model_validator(mode="after")
        def _consistent(self):
            if self.max_steps is None and self.max_time is None:
                raise ValueError("set max_steps, max_time or both: training needs a limit")
            if self.schedule != "constant" and self.max_steps is None:
                raise ValueError(f"schedule {self.schedule} decays over max_steps, but "
                                 f"max_steps is null; set max_steps or use schedule: constant")
            if self.max_steps is not None and self.warmup_steps >= self.max_steps:
                raise ValueError(f"warmup_steps must be below max_steps; found warmup_steps="
                                 f"{self.warmup_steps}, max_steps={self.max_steps}")
            return self

    def fit(self, context: TrainContext) -> dict[str, Any]:
        return _Fit(self.settings, context).run()


def lr_factor(settings: StandardTrainer.Settings, step: int) -> float:
    """The learning rate of optimizer step `step` (from 0) as a share of `settings.lr`."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return 1.0
    span = max(1, settings.max_steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    if settings.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weights of 2+ dimensions (matmuls, embeddings); not biases, norms or other vectors."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, settings: StandardTrainer.Settings) -> torch.optim.AdamW:
    groups = param_groups(model, settings.weight_decay)
    options = {"lr": settings.lr, "betas": (settings.beta1, settings.beta2)}
    try:
        # Fused: one kernel per group, on CUDA and (torch >= 2.4) the CPU, where it measured
        # 3x faster than foreach on a small GPT (0.7 against 2.2 ms a step).
        return torch.optim.AdamW(groups, fused=True, **options)
    except RuntimeError:
        return torch.optim.AdamW(groups, foreach=True, **options)


def _resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("trainer.device: cuda was asked for, but torch finds no CUDA device "
                           f"(torch {torch.__version__}); use device: auto or cpu")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def _training_seed(seed: int) -> int:
    # Derived, so dropout masks do not replay the draws that initialized the weights.
    return int(np.random.SeedSequence([seed, 0x7261696E]).generate_state(1)[0])


def _seed_training_rng(seed: int) -> None:
    derived = _training_seed(seed)
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def _torch_rng_state(device: torch.device) -> dict[str, Any]:
    """The torch generators dropout draws from: a few microseconds, taken at every step."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _num_threads(threads: int | None):
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Interrupt:
    """SIGINT while training: the first asks the loop to stop after saving, a second raises."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _Interrupt:
        # Handlers can only be installed from the main thread; elsewhere Ctrl-C is not ours.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.SIG_DFL)


class _Stopwatch:
    """Training seconds: runs during training steps, paused for evaluation and saving."""

    def __init__(self, seconds: float, device: torch.device) -> None:
        self.before = seconds
        self.device = device
        self.started: float | None = time.perf_counter()  # None while paused

    def elapsed(self) -> float:
        if self.started is None:
            return self.before
        return self.before + time.perf_counter() - self.started

    def stop(self) -> None:
        _sync(self.device)  # queued GPU work belongs to training, not to what follows
        self.before = self.elapsed()
        self.started = None

    @contextlib.contextmanager
    def paused(self):
        self.stop()
        try:
            yield
        finally:
            self.started = time.perf_counter()


class _Fit:
    """One call of StandardTrainer.fit: the loop, its state and what it writes."""

    def __init__(self, settings: StandardTrainer.Settings, context: TrainContext) -> None:
        self.s = settings
        self.context = context
        self.run_dir = Path(context.run_dir)
        self.task = context.task
        self.console = Console(stderr=True)
        self.interrupt = _Interrupt()
        self.step = 0
        self.micro_index = 0  # the data position: micro-batches consumed so far
        self.tokens = 0
        self.best_val_loss: float | None = None
        self.restored_step: int | None = None
        self.last_val_loss: float | None = None
        self.evals_without_improvement = 0
        self.last_eval_step: int | None = None
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_final = False  # marked as the end of a finished run
        self.window_micro_batches = 0  # the train loss is logged as their mean
        self.grad_norm: torch.Tensor | None = None

    def run(self) -> dict[str, Any]:
        with _num_threads(self.s.threads), self.interrupt:
            self._setup()
            try:
                with ProgressBar(self.console, self.s.max_steps, self.s.max_time, self.step,
                               self.clock.elapsed()) as self.progress:
                    summary = self._finish(self._loop())
            finally:
                self.metrics.close()
        self._print_summary(summary)
        return summary

    # -- setup ---------------------------------------------------------------------------------

    def _setup(self) -> None:
        context, s = self.context, self.s
        self.device = _resolve_device(s.device)
        self.model = context.model.to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, s)
        self.window_loss = torch.zeros((), device=self.device)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if s.precision == "bf16" else contextlib.nullcontext())
        state = self._resume_state()
        self._setup_flops()
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE,
                                   self.step if state is not None else None)
        self.metrics.write(self._run_record(resumed=state is not None))
        self.clock = _Stopwatch(state["train_seconds"] if state else 0.0, self.device)
        self.log_mark = (self.tokens, self.clock.elapsed())
        # Last, so nothing above (the peak probe included) draws from the training streams.
        if state is None:
            _seed_training_rng(context.seed)
        else:
            restore_rng_state(state["rng"])

    def _resume_state(self) -> dict[str, Any] | None:
        """Load the latest checkpoint when resuming; refuse to overwrite one otherwise."""
        if not self.context.resume:
            existing = complete_checkpoints(self.run_dir)
            if existing:
                raise LmforgeError(
                    f"{self.run_dir} already has {len(existing)} complete checkpoint(s), the "
                    f"latest {existing[-1].name}; resume it with --resume, or choose another "
                    f"run name (the run's `name`) to start afresh without overwriting it")
            return None
        folder = latest_checkpoint(self.run_dir)
        if folder is None:
            self.console.print(f"no complete checkpoint in {self.run_dir / 'checkpoints'}: "
                               f"starting from step 0")
            return None
        meta = read_meta(folder)
        check_compatible(meta, self.context.config_hash, self.context.tokenizer_hash, folder)
        state = load_trainer_state(folder)
        if state.get("format") != STATE_FORMAT:
            raise LmforgeError(f"checkpoint {folder}: expected trainer state format "
                               f"{STATE_FORMAT}, found {state.get('format')!r}")
        load_model_weights(folder, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self._restore_counters(state)
        self.last_checkpoint = folder
        self.last_checkpoint_final = bool(meta.get("final"))
        self.console.print(f"resuming from {folder} (step {self.step})")
        return state

    def _restore_counters(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.micro_index = state["micro_batch_index"]
        self.tokens = state["tokens"]
        self.best_val_loss = state["best_val_loss"]
        self.last_val_loss = state["last_val_loss"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.last_eval_step = state["last_eval_step"]
        self.window_loss = state["window_loss"].to(self.device)
        self.window_micro_batches = state["window_micro_batches"]

    def _setup_flops(self) -> None:
        info = self.context.model_info
        flops = info.get("flops_per_token")
        if flops is None and callable(getattr(self.model, "flops_per_token", None)):
            flops = self.model.flops_per_token()
        self.flops_per_token = flops
        self.peak = None
        if flops:
            dtype = "bfloat16" if self.s.precision == "bf16" else "float32"
            self.peak, fresh = peak_flops(dtype, self.device.type)
            if fresh:
                self.console.print(f"measured the matmul peak ({dtype}, {self.device.type}, "
                                   f"{torch.get_num_threads()} threads): "
                                   f"{self.peak / 1e9:.1f} GFLOP/s")

    def _run_record(self, resumed: bool) -> dict[str, Any]:
        info = self.context.model_info
        parameters = info.get("parameters") or sum(p.numel() for p in self.params)
        return {"event": "run", "step": self.step, "resumed": resumed,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model": info.get("model") or info.get("name") or type(self.model).__name__,
                "parameters": parameters,
                "flops_per_token": self.flops_per_token, "kernels": self.context.kernels,
                "device": str(self.device), "precision": self.s.precision,
                "threads": torch.get_num_threads(), "batch_size": self.s.batch_size,
                "grad_accum": self.s.grad_accum, "peak_flops": self.peak}

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> str:
        while True:
            # Taken before this step's dropout draws: an interrupted step restarts from here.
            self.torch_rng_at_step_start = _torch_rng_state(self.device)
            reason = self._stop_reason()
            if reason is not None:
                return reason
            if not self._train_step():
                self.optimizer.zero_grad(set_to_none=True)  # drop the unfinished window
                return "interrupted"
            self._after_step()

    def _rng_at_step_start(self) -> dict[str, Any]:
        # Python's and NumPy's generators are taken as they are now, not snapshotted each step:
        # batches come from (seed, index), never from them, and their snapshot (about 80 us)
        # would cost more than the rest of the trainer's work per step.
        return {**capture_rng_state(), **self.torch_rng_at_step_start}

    def _stop_reason(self) -> str | None:
        s = self.s
        if self.interrupt.requested:
            return "interrupted"
        if s.max_steps is not None and self.step >= s.max_steps:
            return "max_steps"
        if s.max_time is not None and self.clock.elapsed() >= s.max_time:
            return "max_time"
        if (s.early_stopping_patience is not None
                and self.evals_without_improvement >= s.early_stopping_patience):
            return "early_stopping"
        return None

    def _train_step(self) -> bool:
        """One optimizer step over `grad_accum` micro-batches; False when interrupted midway."""
        s, task = self.s, self.task
        step_loss = None  # the sum of the micro-batch losses
        tokens = 0
        for micro in range(s.grad_accum):
            batch = task.train_batch(self.micro_index + micro, s.batch_size, self.context.seed)
            if self.interrupt.requested:
                return False
            tokens += task.tokens_in(batch)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self.autocast:
                loss, _ = task.loss(self.model, batch)
            (loss / s.grad_accum).backward()
            # A tensor sum, not .item(): no device sync outside the logged steps.
            step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
        if s.grad_clip is not None:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip)
        # The schedule is a pure function of the step: a resumed run needs nothing else for it.
        lr = s.lr * lr_factor(s, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window_loss.add_(step_loss)
        self.window_micro_batches += s.grad_accum
        self.step += 1
        self.micro_index += s.grad_accum
        self.tokens += tokens
        return True

    def _after_step(self) -> None:
        s = self.s
        if self.step % s.log_every == 0:
            self._log()
        if self.step % s.eval_every == 0:
            with self.clock.paused():
                self._evaluate()
        if s.checkpoint_every is not None and self.step % s.checkpoint_every == 0:
            with self.clock.paused():
                self._checkpoint(capture_rng_state())

    def _finish(self, reason: str) -> dict[str, Any]:
        """The last log line, evaluation and checkpoint (its meta `final` unless interrupted)."""
        self.clock.stop()
        final = reason != "interrupted"
        # Saved at this step and nothing since: a resume of the run must not repeat anything.
        current = (self.last_checkpoint is not None
                   and checkpoint_step(self.last_checkpoint) == self.step)
        if final and self.window_micro_batches:
            self._log()
            current = False
        if final and self.last_eval_step != self.step:
            self._evaluate()
            current = False
        if final and self._restore_best():
            current = False
        summary = self._summary(reason)
        if not current:
            self._checkpoint(self._rng_at_step_start(), {"final": final, "summary": summary})
        elif final and not self.last_checkpoint_final:
            update_meta(self.last_checkpoint, {"final": True, "summary": summary})
        self._plot()
        return summary

    # -- logging, evaluation, checkpoints ------------------------------------------------------

    def _log(self) -> None:
        loss = (self.window_loss / self.window_micro_batches).item()
        elapsed = self.clock.elapsed()
        tokens_per_s = (self.tokens - self.log_mark[0]) / max(elapsed - self.log_mark[1], 1e-9)
        mfu = self._mfu(tokens_per_s)
        record = {"event": "train", "step": self.step, "loss": loss,
                  "lr": self.s.lr * lr_factor(self.s, self.step - 1), "tokens": self.tokens,
                  "tokens_per_s": tokens_per_s, "mfu": mfu, "elapsed": elapsed}
        if self.grad_norm is not None:
            record["grad_norm"] = self.grad_norm.item()
        self.metrics.write(record)
        self.window_loss = torch.zeros((), device=self.device)
        self.window_micro_batches = 0
        self.log_mark = (self.tokens, elapsed)
        stats = f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s"
        if mfu is not None:
            stats += f"  MFU {mfu:.1%}"
        self.progress.update(self.step, elapsed, stats)

    def _mfu(self, tokens_per_s: float) -> float | None:
        if not self.flops_per_token or not self.peak:
            return None
        return 3 * self.flops_per_token * tokens_per_s / self.peak

    def _evaluate(self) -> None:
        """Validation loss, weighted by targets; the training RNG streams come out untouched."""
        rng = capture_rng_state()
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0
        with torch.no_grad(), self.autocast:
            for batch in self.task.eval_batches("val", self.s.batch_size,
                                                limit=self.s.eval_batches):
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                loss, targets = self.task.loss(self.model, batch)
                total += loss.double() * targets
                count += targets
        self.model.train()
        restore_rng_state(rng)
        self.last_eval_step = self.step
        if count == 0:
            return  # no validation data: nothing to report or stop on
        val_loss = (total / count).item()
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = val_loss
            self.evals_without_improvement = 0
            if self.s.restore_best:
                save_best_weights(self.run_dir, self.step, self.model, val_loss)
        else:
            self.evals_without_improvement += 1
        self.last_val_loss = val_loss
        self.metrics.write({"event": "eval", "step": self.step, "tokens": self.tokens,
                            "val_loss": val_loss, "best_val_loss": self.best_val_loss,
                            "elapsed": self.clock.elapsed()})
        self.console.print(f"step {self.step}: val loss {val_loss:.4f}"
                           + (" (best)" if improved else f" (best {self.best_val_loss:.4f})"))
        self._plot()

    def _plot(self) -> None:
        plot_losses(self.run_dir / "plots" / "loss.png", self.metrics.records)

    def _trainer_state(self, rng: dict[str, Any]) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "step": self.step, "micro_batch_index": self.micro_index,
                "tokens": self.tokens, "train_seconds": self.clock.elapsed(),
                "optimizer": self.optimizer.state_dict(), "rng": rng,
                "best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
                "evals_without_improvement": self.evals_without_improvement,
                "last_eval_step": self.last_eval_step, "window_loss": self.window_loss.cpu(),
                "window_micro_batches": self.window_micro_batches}

    def _checkpoint(self, rng: dict[str, Any], extra_meta: dict[str, Any] | None = None) -> None:
        meta = {"config_hash": self.context.config_hash,
                "tokenizer_hash": self.context.tokenizer_hash, "val_loss": self.last_val_loss,
                "best_val_loss": self.best_val_loss, "tokens": self.tokens, "final": False,
                **(extra_meta or {})}
        self.last_checkpoint = save_checkpoint(self.run_dir, self.step, self.model,
                                               self._trainer_state(rng), meta)
        self.last_checkpoint_final = meta["final"]
        prune_checkpoints(self.run_dir, self.s.keep_last)

    # -- the end -------------------------------------------------------------------------------

    def _restore_best(self) -> bool:
        """Load the best evaluation's weights when asked to and they are not the current ones."""
        best = best_weights(self.run_dir) if self.s.restore_best else None
        meta = read_meta(best) if best is not None else {}
        # best/ must be this run's: a folder left by an earlier run in the directory is not
        if not meta or meta["val_loss"] != self.best_val_loss or meta["step"] > self.step:
            return False
        step = self.restored_step = meta["step"]
        if step == self.step:
            return False
        load_model_weights(best, self.model)
        self.console.print(f"restored the weights of step {step} (best val loss "
                           f"{self.best_val_loss:.4f})")
        return True

    def _summary(self, reason: str) -> dict[str, Any]:
        seconds = self.clock.elapsed()
        tokens_per_s = self.tokens / seconds if seconds > 0 else 0.0
        last_train = self.metrics.last("train")
        return {
            "stopped": reason, "interrupted": reason == "interrupted", "steps": self.step,
            "tokens": self.tokens, "train_seconds": seconds, "tokens_per_s": tokens_per_s,
            "final_train_loss": last_train["loss"] if last_train else None,
            "best_val_loss": self.best_val_loss, "final_val_loss": self.last_val_loss,
            "mfu": self._mfu(tokens_per_s), "peak_flops": self.peak,
            "checkpoint": str(checkpoint_dir(self.run_dir, self.step)),
            "weights_from_step": self.step if self.restored_step is None else self.restored_step,
        }

    def _print_summary(self, summary: dict[str, Any]) -> None:
        lines = [f"stopped at step {summary['steps']} ({summary['stopped']}) after "
                 f"{summary['train_seconds']:.1f} s of training: {summary['tokens']:,} tokens, "
                 f"{summary['tokens_per_s']:,.0f} tokens/s"]
        losses = [f"{name} {summary[key]:.4f}" for name, key in
                  (("train loss", "final_train_loss"), ("val loss", "final_val_loss"),
                   ("best val loss", "best_val_loss")) if summary[key] is not None]
        if losses:
            lines.append(", ".join(losses))
        if summary["mfu"] is not None:
            lines.append(f"MFU {summary['mfu']:.1%} against a measured matmul peak of "
                         f"{summary['peak_flops'] / 1e9:.1f} GFLOP/s (probe, {self.s.precision}, "
                         f"{self.device.type})")
        lines.append(f"checkpoint: {summary['checkpoint']}")
        if summary["interrupted"]:
            lines.append("interrupted: resume with --resume")
        self.console.print("\n".join(lines), highlight=False)


@hookimpl
def register_trainers(register):
    register("standard", StandardTrainer)
