"""The callback interface: what a trainer tells the code watching a run, event by event."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.settings import NoSettings, Settings

if TYPE_CHECKING:
    from lmforge.interfaces.trainer import TrainContext


class Callback:
    """Watches a training run without changing it; every hook does nothing unless overridden.

    A trainer calls the hooks in the order of `TrainContext.callbacks`, with the records it
    writes to metrics.jsonl (whose own writer comes first, so the file is up to date in every
    hook); the keys listed below are the standard trainer's. A callback must not draw from the
    random generators: a resumed run would differ from an uninterrupted one.
    """

    Settings = NoSettings

    def __init__(self, settings: Settings):
        self.settings = settings

    def on_fit_start(self, context: TrainContext, record: dict[str, Any]) -> None:
        """Training starts or resumes: `record` is the session's "run" line (step, resumed,
        model, device, max_steps, max_time, elapsed training seconds so far...)."""

    def on_train_log(self, record: dict[str, Any]) -> None:
        """A "train" line: step, loss, lr, tokens, tokens_per_s, mfu, elapsed (seconds)."""

    def on_eval(self, record: dict[str, Any]) -> None:
        """An "eval" line: step, tokens, val_loss, best_val_loss, elapsed."""

    def on_checkpoint(self, step: int, folder: Path) -> None:
        """The checkpoint of `step` is complete in `folder`."""

    def on_fit_end(self, summary: dict[str, Any] | None) -> None:
        """Training is over: `summary` is what `Trainer.fit` returns, None when it raised."""
