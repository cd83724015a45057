"""The trainer interface: fit a model on a task into the run directory, resuming exactly."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.interfaces.callback import Callback
from lmforge.interfaces.task import Task
from lmforge.settings import NoSettings, Settings


@dataclass
class TrainContext:
    """Everything a trainer needs for one run."""

    run_dir: Path
    model: nn.Module
    task: Task
    seed: int
    config_hash: str  # checkpoints record it; resuming with another config is refused
    tokenizer_hash: str
    resume: bool = False
    model_info: dict[str, Any] = field(default_factory=dict)  # name, parameters, FLOPs/token
    kernels: str = "reference"  # the active kernels backend, logged with the metrics
    callbacks: list[Callback] = field(default_factory=list)  # the config's, called in order


class Trainer(ABC):
    """Fits `context.model` on `context.task`, writing checkpoints and metrics under run_dir
    and calling the hooks of `context.callbacks` as it goes."""

    Settings = NoSettings
    distributed = False  # True: trains across the processes torchrun starts, one per rank

    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def eval_batch_size(self) -> int:
        """Sequences per batch when the pipeline evaluates the trained model on whole splits."""
        return 16

    @abstractmethod
    def fit(self, context: TrainContext) -> dict[str, Any]:
        """Train (resuming from the latest complete checkpoint when asked); return a summary.

        The pipeline reads two keys of the summary: "checkpoint", the path of the checkpoint
        holding the final weights, and "interrupted", True when training stopped early on
        Ctrl-C (the run is then resumable and not evaluated). Other keys are the trainer's own.
        """
