"""Built-in callbacks `loss-plot` and `progress-bar`: what a run shows as it trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from lmforge.atomic import atomic_file
from lmforge.interfaces.callback import Callback
from lmforge.run.folder import read_metrics


def plot_losses(path: Path, records: list[dict[str, Any]]) -> None:
    """Train and validation loss against steps (left) and tokens (right), as a PNG."""
    # Imported here: matplotlib costs about half a second, paid only by runs that plot.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4))
    by_step, by_tokens = figure.subplots(1, 2, sharey=True)
    for event, label, style in (("train", "train", {}), ("eval", "val", {"marker": "o"})):
        key = "loss" if event == "train" else "val_loss"
        points = [r for r in records if r.get("event") == event and r.get(key) is not None]
        for axis, x in ((by_step, "step"), (by_tokens, "tokens")):
            axis.plot([r[x] for r in points], [r[key] for r in points], label=label, **style)
    for axis, x in ((by_step, "step"), (by_tokens, "tokens")):
        axis.set_xlabel(x)
        axis.grid(alpha=0.3)
    by_step.set_ylabel("loss")
    by_step.legend()
    figure.tight_layout()
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


class LossPlot(Callback):
    """Draws `plots/loss.png` in the run folder: train and validation loss against steps and
    tokens, redrawn after each evaluation and at the end (resumed runs include earlier steps)."""

    def on_fit_start(self, context, record: dict[str, Any]) -> None:
        self.path = Path(context.run_dir) / "plots" / "loss.png"
        # metrics.jsonl is already cut back to the resumed step: its writer is called first
        self.records = read_metrics(context.run_dir)

    def on_train_log(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def on_eval(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        plot_losses(self.path, self.records)

    def on_fit_end(self, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            plot_losses(self.path, self.records)


STATS = (("loss", "loss {:.4f}"), ("tokens_per_s", "{:,.0f} tok/s"), ("mfu", "MFU {:.1%}"))


class ProgressBar(Callback):
    """A progress bar on stderr: the step (or the training seconds when only max_time limits
    the run), loss, tokens/s and MFU; off when stderr is not a terminal or
    LMFORGE_NO_PROGRESS=1."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.progress: Progress | None = None

    def on_fit_start(self, context, record: dict[str, Any]) -> None:
        console = Console(stderr=True)
        enabled = console.is_terminal and os.environ.get("LMFORGE_NO_PROGRESS") != "1"
        self.by_steps = record.get("max_steps") is not None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                                 console=console, transient=False, disable=not enabled)
        self.task = self.progress.add_task(
            f"step {record['step']}", stats="",
            total=record["max_steps"] if self.by_steps else record.get("max_time"),
            completed=record["step"] if self.by_steps else record.get("elapsed", 0.0))
        self.progress.start()

    def on_train_log(self, record: dict[str, Any]) -> None:
        # .get: a third-party trainer's records may carry fewer figures than the standard one's
        stats = "  ".join(text.format(record[key]) for key, text in STATS
                          if record.get(key) is not None)
        self.progress.update(self.task, description=f"step {record['step']}", stats=stats,
                             completed=record["step"] if self.by_steps else record.get("elapsed"))

    def on_fit_end(self, summary: dict[str, Any] | None) -> None:
        if self.progress is not None:
            self.progress.stop()
