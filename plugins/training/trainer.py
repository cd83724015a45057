"""Built-in trainer `standard`: AdamW with warmup and decay, checkpoints, exact resume, metrics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge import hookimpl
from lmforge.interfaces.trainer import TrainContext, Trainer
from lmforge.plugins.training.callbacks import LossPlot, ProgressBar
from lmforge.plugins.training.loop import Fit
from lmforge.settings import Settings as ComponentSettings


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
    resume. Dropout draws from torch's generator seeded per micro-batch by (seed, index), so its
    masks do not depend on earlier steps, on resuming, or on which process computes them;
    evaluation leaves the generators untouched. Under torchrun (`lmforge run --nproc N`) the model
    is wrapped for `strategy` (ddp or fsdp), each rank computes its share of each step's global
    batch (batch_size x grad_accum, the same at any N), validation is split over the ranks, and
    rank 0 alone logs and saves; checkpoints keep the one-process layout, so a run resumes at any
    process count.
    Writes `metrics.jsonl` (a `run` line per session, then `train` and `eval` lines) and calls
    the run's callbacks (by default `loss-plot` and `progress-bar`) with each line. With
    `restore_best`, each better validation loss saves the weights to `best/`, and the final
    checkpoint holds those weights. MFU is 3 x the model's forward FLOPs per token x tokens/s
    over the machine's matmul peak measured by a short probe (lmforge.plugins.training.peak).
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
        strategy: Literal["ddp", "fsdp"] = Field(
            "ddp", description="across several processes: ddp (a replica each) or fsdp "
                               "(parameters, gradients and optimizer state sharded)")
        backend: Literal["auto", "gloo", "nccl"] = Field(
            "auto", description="collectives across processes; auto: nccl on GPU, gloo on CPU")
        collective_timeout: float = Field(
            120.0, gt=0.0, description="seconds a collective waits for the other processes "
                                       "before the run ends with an error naming the stalled one")

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

    distributed = True

    @property
    def eval_batch_size(self) -> int:
        return self.settings.batch_size

    def fit(self, context: TrainContext) -> dict[str, Any]:
        return Fit(self.settings, context).run()


@hookimpl
def register_trainers(register):
    register("standard", StandardTrainer)


@hookimpl
def register_callbacks(register):
    register("loss-plot", LossPlot)
    register("progress-bar", ProgressBar)
