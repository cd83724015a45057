"""Checkpoints `run_dir/checkpoints/step-N/`: weights, trainer state and meta, saved atomically."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge import __version__
from lmforge.atomic import atomic_dir, atomic_write_text, is_complete
from lmforge.errors import LmforgeError

# torch and safetensors are imported where weights are read or written, so that the `lmforge`
# command starts without torch (`lmforge runs`, the bundle commands)
if TYPE_CHECKING:
    from torch import nn

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer.pt"
META_FILE = "meta.json"
MARKER = "COMPLETE"
_STEP_NAME = re.compile(r"^step-(\d{8,})$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, state: dict[str, Any],
                    meta: dict[str, Any], write_weights: Callable[[Path], None] | None = None
                    ) -> Path:
    """Write the checkpoint of `step` atomically (its COMPLETE marker last); return its folder.

    `state` must hold only tensors and plain Python values: it is read back with
    `torch.load(weights_only=True)`. `meta` gets `step`, `time` and `lmforge_version` added.
    `write_weights(path)` replaces saving `model` where its weights are held elsewhere (sharded).
    """
    import torch
    from safetensors.torch import save_model

    final = checkpoint_dir(run_dir, step)
    meta = {**meta, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "lmforge_version": __version__}
    with atomic_dir(final, MARKER) as tmp:
        # save_model drops the duplicate names of tied weights, which safetensors refuses.
        if write_weights is None:
            save_model(model, str(tmp / MODEL_FILE))
        else:
            write_weights(tmp / MODEL_FILE)
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
    return final


def update_meta(folder: Path, changes: dict[str, Any]) -> None:
    """Add `changes` to a checkpoint's meta.json atomically: the folder stays complete."""
    meta = {**read_meta(folder), **changes}
    atomic_write_text(Path(folder) / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def checkpoint_step(folder: Path) -> int | None:
    """The step a checkpoint folder holds, from its name; None for other names."""
    match = _STEP_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def step_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """Every `step-N` folder of a run with its step, complete or not, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((step, p) for step, p in found if step is not None)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first; unfinished ones are ignored."""
    return [p for _, p in step_folders(run_dir) if is_complete(p, MARKER)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def load_model_weights(folder: Path, model: nn.Module) -> None:
    """Load a checkpoint's weights into `model` in place, on the device the model is on."""
    from safetensors.torch import load_model

    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise LmforgeError(f"checkpoint {folder}: expected weights in {path}, found no such file")
    first = next(model.parameters(), None)
    device = str(first.device) if first is not None else "cpu"
    try:
        load_model(model, str(path), strict=True, device=device)
    except RuntimeError as exc:
        raise LmforgeError(f"checkpoint {folder}: its weights do not fit this "
                           f"{type(model).__name__} (was the model changed?): {exc}") from exc


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """The trainer state saved with a checkpoint (tensors on the CPU)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise LmforgeError(f"checkpoint {folder}: expected the trainer state in {path}, "
                           f"found no such file")
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def read_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LmforgeError(f"checkpoint {folder}: expected a JSON object in {path}: {exc}") from exc


def refuse_overwrite(run_dir: Path, checkpoints: list[Path]) -> None:
    """A run started afresh must not write over the complete checkpoints already in its folder."""
    if checkpoints:
        raise LmforgeError(
            f"{run_dir} already has {len(checkpoints)} complete checkpoint(s), the latest "
            f"{checkpoints[-1].name}; resume it with --resume, or choose another run name (the "
            f"run's `name`) to start afresh without overwriting it")


def check_compatible(meta: dict[str, Any], config_hash: str, tokenizer_hash: str | None,
                     folder: Path | str | None = None) -> None:
    """Refuse to resume from a checkpoint written with another config or tokenizer (the
    tokenizer is not checked when `tokenizer_hash` is None: not known yet)."""
    where = folder if folder is not None else f"step {meta.get('step')}"
    for what, expected in (("config", config_hash), ("tokenizer", tokenizer_hash)):
        saved = meta.get(f"{what}_hash")
        if expected is not None and saved != expected:
            raise LmforgeError(
                f"cannot resume from checkpoint {where}: it was written with {what} hash "
                f"{saved!r}, but the {what} now hashes to {expected!r}; the {what} changed since "
                f"the checkpoint was written. Restore the {what} it was written with, or start "
                f"a new run under another name")
