"""The metric interface: figures computed over the batches a task scores, one at a time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from lmforge.settings import NoSettings, Settings


class Metric(ABC):
    """A streaming metric: `update` with each scored batch of one evaluation, then `compute`.

    A task creates fresh metrics for each evaluation, from the names in its `metrics` setting.
    What a scored batch holds is the task's own (its docstring lists the keys), so `tasks` names
    the tasks whose batches the metric reads (empty: any task); a config naming the metric for
    another task is an error.
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
