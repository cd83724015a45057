"""The metric interface: figures computed over the batches a task scores, one at a time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from lmforge.settings import NoSettings, Settings


class Metric(ABC):
    """A streaming metric: `update` with each scored batch of one evaluation, then `compute`.

    A task creates fresh metrics for each evaluation, from the names in its `metrics` setting.
    What a scored batch holds is the task's: the `lm` task gives `nats` (summed negative
    log-likelihood), `targets` (tokens predicted) and `text_bytes` (UTF-8 bytes of the whole
    text scored); the `classify` task gives `target` and `predicted` label ids (1-D arrays) and
    `labels` (the label names). `tasks` names the tasks whose batches the metric reads (empty:
    any task); a config naming it for another task is an error.
    """

    Settings = NoSettings
    tasks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def update(self, scored: Mapping[str, Any]) -> None:
        """Add one scored batch."""

    @abstractmethod
    def compute(self) -> dict[str, Any]:
        """The figures over every batch so far, by the names eval.json records them under."""
