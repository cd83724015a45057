"""The standard trainer's loop: steps, logging, evaluation, checkpoints and the summary."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.interfaces.trainer import TrainContext
from lmforge.plugins.training.distributed import (
    Heartbeat,
    no_gradient_sync,
    rank_device,
    share_of,
    training_group,
    wrap,
)
from lmforge.plugins.training.fsdp_state import ModelState
from lmforge.plugins.training.optim import build_optimizer, lr_factor
from lmforge.plugins.training.peak import peak_flops, summary_text
from lmforge.plugins.training.state import (
    STATE_FORMAT,
    Interrupt,
    Stopwatch,
    best_weights,
    capture_rng_state,
    prune_checkpoints,
    restore_rng_state,
    save_best_weights,
    seed_dropout,
    seed_training_rng,
)
from lmforge.run.checkpoint import (
    check_compatible,
    checkpoint_dir,
    checkpoint_step,
    complete_checkpoints,
    latest_checkpoint,
    load_trainer_state,
    read_meta,
    refuse_overwrite,
    save_checkpoint,
    update_meta,
)
from lmforge.run.folder import MetricsLog
from lmforge.run.world import current_world

if TYPE_CHECKING:
    from lmforge.plugins.training.trainer import StandardTrainer


def _resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("trainer.device: cuda was asked for, but torch finds no CUDA device "
                           f"(torch {torch.__version__}); use device: auto or cpu")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


@contextlib.contextmanager
def _num_threads(threads: int | None):
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Fit:
    """One call of StandardTrainer.fit: the loop, its state and the callbacks it calls."""

    def __init__(self, settings: StandardTrainer.Settings, context: TrainContext) -> None:
        self.s = settings
        self.context = context
        self.run_dir = Path(context.run_dir)
        self.task = context.task
        self.world = current_world()
        self.distributed = self.world.size > 1
        # rank 0 alone prints, logs, plots and saves; the others compute
        self.console = Console(stderr=True, quiet=not self.world.main)
        self.interrupt = Interrupt()
        self.metrics = MetricsLog(self.run_dir)
        self.callbacks = [self.metrics, *context.callbacks] if self.world.main else []
        self.share = share_of(self.world, settings.batch_size, settings.grad_accum)
        self.heartbeat: Heartbeat | None = None
        self.agreed_stop = self.agreed_time_up = False  # what the ranks decided together
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
            state = self._setup()
            summary = None
            try:
                seconds = state["train_seconds"] if state else 0.0
                self._call("on_fit_start", self.context, self._run_record(state, seconds))
                self._start(state, seconds)
                summary = self._train()
            finally:
                self._call("on_fit_end", summary)
                if self.heartbeat is not None:
                    self.heartbeat.close()
        self._print_summary(summary)
        return summary

    def _train(self) -> dict[str, Any]:
        if not self.distributed:
            return self._finish(self._loop())
        try:
            self._agree()
            return self._finish(self._loop())
        except RuntimeError as exc:  # a collective failed: say which rank stopped answering
            raise self.heartbeat.explain(exc, self.s.collective_timeout) from exc

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    # -- setup ---------------------------------------------------------------------------------

    def _setup(self) -> dict[str, Any] | None:
        """Device, model, optimizer and, when resuming, the checkpoint's state."""
        context, s = self.context, self.s
        self.device = rank_device(_resolve_device(s.device), self.world)
        # `module` is the model itself (what checkpoints hold); `model` may wrap it for DDP
        self.module = self.model = context.model.to(self.device)
        self.model.train()
        self.window_loss = torch.zeros((), device=self.device)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if s.precision == "bf16" else contextlib.nullcontext())
        if self.distributed:
            self.group = training_group(self.world, s.backend, self.device, s.collective_timeout)
            self.heartbeat = Heartbeat(self.world)
            self.model = wrap(self.module, s.strategy, self.group, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.module, s)
        self.fsdp = self.distributed and s.strategy == "fsdp"
        self.saved = ModelState(self.module, self.optimizer, self.fsdp, self.world.main)
        state = self._resume_state()
        if self.world.main:
            self._setup_flops()
        else:
            self.flops_per_token = self.peak = None
        return state

    def _start(self, state: dict[str, Any] | None, seconds: float) -> None:
        self.clock = Stopwatch(seconds, self.device)
        self.log_mark = (self.tokens, seconds)
        # Last, so nothing before (the peak probe, callbacks) draws from the training streams.
        if state is None:
            seed_training_rng(self.context.seed)
        else:
            restore_rng_state(state["rng"])

    def _resume_state(self) -> dict[str, Any] | None:
        """Load the latest checkpoint when resuming; refuse to overwrite one otherwise."""
        if not self.context.resume:
            refuse_overwrite(self.run_dir, complete_checkpoints(self.run_dir))
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
        self.saved.load_weights(folder)
        self.saved.load_optimizer(state["optimizer"])
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
        # the window's loss is saved summed over the ranks: rank 0 carries it on, at any count
        self.window_loss = state["window_loss"].to(self.device) * float(self.world.main)
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

    def _run_record(self, state: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
        info = self.context.model_info
        parameters = info.get("parameters") or sum(p.numel() for p in self.params)
        return {"event": "run", "step": self.step, "resumed": state is not None,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model": info.get("model") or info.get("name") or type(self.model).__name__,
                "parameters": parameters,
                "flops_per_token": self.flops_per_token, "kernels": self.context.kernels,
                "device": str(self.device), "precision": self.s.precision,
                "threads": torch.get_num_threads(), "batch_size": self.s.batch_size,
                "grad_accum": self.s.grad_accum, "processes": self.world.size,
                "strategy": self.s.strategy if self.distributed else None,
                "peak_flops": self.peak,
                "max_steps": self.s.max_steps, "max_time": self.s.max_time, "elapsed": seconds}

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> str:
        while True:
            reason = self._stop_reason()
            if reason is not None:
                return reason
            if not self._train_step():
                self.optimizer.zero_grad(set_to_none=True)  # drop the unfinished window
                return "interrupted"
            self._after_step()

    def _agree(self, tokens: int = 0) -> int:
        """One collective per step: the step's tokens summed over the ranks, and whether any rank
        was interrupted or ran out of time, so that all of them stop at the same step."""
        s = self.s
        time_up = s.max_time is not None and self.clock.elapsed() >= s.max_time
        figures = torch.tensor([tokens, self.interrupt.requested, time_up],
                               dtype=torch.float64, device=self.device)
        dist.all_reduce(figures, group=self.group)
        total, self.agreed_stop, self.agreed_time_up = figures.tolist()
        return int(total)

    def _stop_reason(self) -> str | None:
        s = self.s
        if self.agreed_stop if self.distributed else self.interrupt.requested:
            return "interrupted"
        if s.max_steps is not None and self.step >= s.max_steps:
            return "max_steps"
        if (self.agreed_time_up if self.distributed
                else s.max_time is not None and self.clock.elapsed() >= s.max_time):
            return "max_time"
        if (s.early_stopping_patience is not None
                and self.evals_without_improvement >= s.early_stopping_patience):
            return "early_stopping"
        return None

    def _train_step(self) -> bool:
        """One optimizer step over `grad_accum` micro-batches; False when interrupted midway."""
        s, task, share = self.s, self.task, self.share
        step_loss = None  # the sum of the micro-batch losses (this rank's part of them)
        tokens = 0
        for micro in share.micro_batches:
            index = self.micro_index + micro
            batch = share.take(task.train_batch(index, s.batch_size, self.context.seed))
            # Ranks decide to stop together, after the step; one process may stop midway.
            if self.interrupt.requested and not self.distributed:
                return False
            tokens += task.tokens_in(batch)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            # Dropout masks follow the micro-batch, whichever process and session computes it.
            seed_dropout(self.context.seed, index, self.device)
            with no_gradient_sync(self.model, micro == share.micro_batches[-1]):
                with self.autocast:
                    loss, _ = task.loss(self.model, batch)
                (loss / len(share.micro_batches)).backward()
            # A tensor sum, not .item(): no device sync outside the logged steps.
            loss = loss.detach() * share.loss_weight
            step_loss = loss if step_loss is None else step_loss + loss
        if self.distributed:
            tokens = self._agree(tokens)
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
            self._checkpoint(capture_rng_state(), {"final": final, "summary": summary})
        elif final and not self.last_checkpoint_final and self.world.main:
            update_meta(self.last_checkpoint, {"final": True, "summary": summary})
        return summary

    # -- logging, evaluation, checkpoints ------------------------------------------------------

    def _window_loss(self) -> torch.Tensor:
        """The summed loss of the micro-batches since the last log line, over all ranks."""
        if not self.distributed:
            return self.window_loss
        total = self.window_loss.clone()
        dist.all_reduce(total, group=self.group)
        return total

    def _log(self) -> None:
        loss = (self._window_loss() / self.window_micro_batches).item()
        elapsed = self.clock.elapsed()
        tokens_per_s = (self.tokens - self.log_mark[0]) / max(elapsed - self.log_mark[1], 1e-9)
        mfu = self._mfu(tokens_per_s)
        record = {"event": "train", "step": self.step, "loss": loss,
                  "lr": self.s.lr * lr_factor(self.s, self.step - 1), "tokens": self.tokens,
                  "tokens_per_s": tokens_per_s, "mfu": mfu, "elapsed": elapsed}
        if self.grad_norm is not None:
            record["grad_norm"] = self.grad_norm.item()
        self.window_loss = torch.zeros((), device=self.device)
        self.window_micro_batches = 0
        self.log_mark = (self.tokens, elapsed)
        self._call("on_train_log", record)

    def _mfu(self, tokens_per_s: float) -> float | None:
        if not self.flops_per_token or not self.peak:
            return None
        # the peak is one process's: the job's is that many times it
        return 3 * self.flops_per_token * tokens_per_s / (self.peak * self.world.size)

    def _evaluate(self) -> None:
        """Validation loss, weighted by targets; the training RNG streams come out untouched."""
        rng = capture_rng_state()
        self.model.eval()
        # the summed loss x targets, and the targets
        figures = torch.zeros(2, device=self.device, dtype=torch.float64)
        batches = list(self.task.eval_batches("val", self.s.batch_size, limit=self.s.eval_batches))
        mine = batches[self.world.rank::self.world.size]
        # Every rank runs as many forwards (FSDP gathers parameters in each): a rank short of a
        # batch scores one more with weight 0.
        rounds = -(-len(batches) // self.world.size)
        with torch.no_grad(), self.autocast:
            for i in range(rounds):
                batch, weight = (mine[i], 1.0) if i < len(mine) else (batches[0], 0.0)
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                loss, targets = self.task.loss(self.model, batch)
                figures[0] += loss.double() * targets * weight
                figures[1] += targets * weight
        if self.fsdp:  # the root keeps its gathered parameters after a forward without backward
            self.model.reshard()
        if self.distributed:
            dist.all_reduce(figures, group=self.group)
        self.model.train()
        restore_rng_state(rng)
        self.last_eval_step = self.step
        total, count = figures.tolist()
        if count == 0:
            return  # no validation data: nothing to report or stop on
        val_loss = total / count
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = val_loss
            self.evals_without_improvement = 0
            if self.s.restore_best:
                self._save_best(val_loss)
        else:
            self.evals_without_improvement += 1
        self.last_val_loss = val_loss
        self.console.print(f"step {self.step}: val loss {val_loss:.4f}"
                           + (" (best)" if improved else f" (best {self.best_val_loss:.4f})"))
        self._call("on_eval", {"event": "eval", "step": self.step, "tokens": self.tokens,
                               "val_loss": val_loss, "best_val_loss": self.best_val_loss,
                               "elapsed": self.clock.elapsed()})

    def _save_best(self, val_loss: float) -> None:
        writer = self.saved.weights_writer()  # every rank gathers
        if self.world.main:
            save_best_weights(self.run_dir, self.step, self.module, val_loss, writer)
        if self.distributed:  # the others may read best/ at the end: it must be whole by then
            dist.barrier(group=self.group)

    def _trainer_state(self, rng: dict[str, Any]) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "step": self.step, "micro_batch_index": self.micro_index,
                "tokens": self.tokens, "train_seconds": self.clock.elapsed(),
                "optimizer": self.saved.optimizer_state(), "rng": rng,
                "best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
                "evals_without_improvement": self.evals_without_improvement,
                "last_eval_step": self.last_eval_step, "window_loss": self._window_loss().cpu(),
                "window_micro_batches": self.window_micro_batches}

    def _checkpoint(self, rng: dict[str, Any], extra_meta: dict[str, Any] | None = None) -> None:
        meta = {"config_hash": self.context.config_hash,
                "tokenizer_hash": self.context.tokenizer_hash, "val_loss": self.last_val_loss,
                "best_val_loss": self.best_val_loss, "tokens": self.tokens, "final": False,
                "processes": self.world.size, **(extra_meta or {})}
        state, writer = self._trainer_state(rng), self.saved.weights_writer()  # every rank gathers
        self.last_checkpoint = checkpoint_dir(self.run_dir, self.step)
        self.last_checkpoint_final = meta["final"]
        if not self.world.main:
            return
        save_checkpoint(self.run_dir, self.step, self.module, state, meta, writer)
        prune_checkpoints(self.run_dir, self.s.keep_last)
        self._call("on_checkpoint", self.step, self.last_checkpoint)

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
        self.saved.load_weights(best)
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
        self.console.print(summary_text(summary, self.s.precision, self.device.type),
                           highlight=False)
