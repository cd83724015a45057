"""The standard trainer's state: RNG streams, training seconds, Ctrl-C, kept and best weights."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn

from lmforge import __version__
from lmforge.atomic import atomic_dir, is_complete, remove_dir
from lmforge.errors import LmforgeError
from lmforge.run.checkpoint import CHECKPOINTS, MARKER, META_FILE, MODEL_FILE, step_folders

STATE_FORMAT = 1  # of the trainer state saved with each checkpoint
BEST = "best"  # the folder of the weights with the best validation loss (restore_best)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (loadable weights_only)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]),
                  "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the RNGs back to a state `capture_rng_state` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy["key"].numpy().astype(np.uint32),
                                   "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_seed(seed: int) -> int:
    # Derived, so dropout masks do not replay the draws that initialized the weights.
    return int(np.random.SeedSequence([seed, 0x7261696E]).generate_state(1)[0])


def seed_training_rng(seed: int) -> None:
    derived = training_seed(seed)
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def seed_dropout(seed: int, micro_batch: int, device: torch.device) -> None:
    """Seed the generator of `device` for one micro-batch: its dropout masks then depend on the
    run's seed and the micro-batch alone, not on the process that computes it or on earlier
    steps."""
    derived = int(np.random.SeedSequence([seed, micro_batch, 0x64726F70]).generate_state(1)[0])
    # not torch.manual_seed, which seeds every device type there is (85 us a call here)
    if device.type == "cuda":
        torch.cuda.manual_seed(derived)
    else:
        torch.default_generator.manual_seed(derived)


class Interrupt:
    """SIGINT while training: the first asks the loop to stop after saving, a second raises."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> Interrupt:
        # Handlers can only be installed from the main thread; elsewhere Ctrl-C is not ours.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.SIG_DFL)


class Stopwatch:
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
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # queued GPU work belongs to training
        self.before = self.elapsed()
        self.started = None

    @contextlib.contextmanager
    def paused(self):
        self.stop()
        try:
            yield
        finally:
            self.started = time.perf_counter()


def save_best_weights(run_dir: Path, step: int, model: nn.Module, val_loss: float,
                      write_weights: Callable[[Path], None] | None = None) -> Path:
    """Replace `run_dir/best/` atomically with the weights of `step` and its validation loss
    (written by `write_weights(path)` where given, as for a checkpoint)."""
    folder = Path(run_dir) / BEST
    meta = {"step": step, "val_loss": val_loss, "lmforge_version": __version__}
    with atomic_dir(folder, MARKER) as tmp:
        if write_weights is None:
            save_model(model, str(tmp / MODEL_FILE))
        else:
            write_weights(tmp / MODEL_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
    return folder


def best_weights(run_dir: Path) -> Path | None:
    """The complete `best/` folder of a run, if it has one."""
    folder = Path(run_dir) / BEST
    return folder if is_complete(folder, MARKER) else None


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and older unfinished ones.

    Call it once the newest checkpoint is complete; it never deletes the newest. Returns the
    folders removed.
    """
    if keep_last < 2:
        raise LmforgeError(f"keep_last: expected at least 2 (one checkpoint may be half-written "
                           f"when a run dies), found {keep_last}")
    folders = step_folders(run_dir)
    complete = [(step, p) for step, p in folders if is_complete(p, MARKER)]
    if not complete:
        return []
    kept = {p for _, p in complete[-keep_last:]}
    newest = complete[-1][0]
    removed = [p for step, p in folders if p not in kept and step < newest]
    for folder in removed:
        remove_dir(folder, MARKER)
    for leftover in (Path(run_dir) / CHECKPOINTS).glob(".step-*.tmp-*"):
        # Temporary folders of a process killed while saving.
        shutil.rmtree(leftover, ignore_errors=True)
    return removed
