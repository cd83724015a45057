"""What the standard trainer shows as it runs: the loss plot and the progress bar."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    figure.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


class ProgressBar:
    """A rich progress bar on stderr, off when stderr is not a terminal or LMFORGE_NO_PROGRESS=1."""

    def __init__(self, console: Console, total_steps: int | None, max_time: float | None,
                 start_step: int, start_seconds: float) -> None:
        enabled = console.is_terminal and os.environ.get("LMFORGE_NO_PROGRESS") != "1"
        self.by_steps = total_steps is not None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                                 console=console, transient=False, disable=not enabled)
        self.task = self.progress.add_task(
            f"step {start_step}", stats="",
            total=total_steps if self.by_steps else max_time,
            completed=start_step if self.by_steps else start_seconds)

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, step: int, seconds: float, stats: str) -> None:
        self.progress.update(self.task, description=f"step {step}", stats=stats,
                             completed=step if self.by_steps else seconds)
