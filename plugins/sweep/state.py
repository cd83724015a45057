"""`runs/<sweep>/sweep.json`: what a sweep was asked to do and where each of its trials stands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError

STATE_FILE = "sweep.json"
STATE_FORMAT = 1
MINIMIZED = {"loss", "perplexity", "bits_per_byte"}
MAXIMIZED = {"accuracy", "f1", "macro_f1", "micro_f1", "precision", "recall"}
SPLITS = ("val", "test")


def parse_objective(objective: str) -> tuple[str, str]:
    split, _, metric = objective.partition(".")
    if split not in SPLITS or not metric:
        raise LmforgeError(f"--objective {objective!r}: expected SPLIT.METRIC with SPLIT one of "
                           f"{', '.join(SPLITS)}, e.g. val.loss or val.accuracy")
    return split, metric


def infer_direction(objective: str) -> str:
    _, metric = parse_objective(objective)
    if metric in MINIMIZED:
        return "minimize"
    if metric in MAXIMIZED:
        return "maximize"
    raise LmforgeError(f"--objective {objective}: cannot tell whether {metric!r} is better "
                       f"low or high; give --direction minimize or --direction maximize")


def read_objective(eval_file: Path, objective: str) -> float:
    split, metric = parse_objective(objective)
    figures = json.loads(eval_file.read_text(encoding="utf-8")).get(split) or {}
    value = figures.get(metric)
    if not isinstance(value, (int, float)):
        found = ", ".join(k for k, v in figures.items() if isinstance(v, (int, float)))
        raise LmforgeError(f"{eval_file}: no number {objective}; {split} has: "
                           f"{found or 'nothing'}")
    return float(value)


class SweepState:
    """The sweep's definition and its trials, saved atomically after every change."""

    def __init__(self, path: Path, definition: dict[str, Any],
                 trials: list[dict[str, Any]]) -> None:
        self.path = path
        self.definition = definition
        self.trials = trials

    @classmethod
    def open(cls, folder: Path, definition: dict[str, Any]) -> SweepState:
        """Continue the sweep saved in `folder`, or start one; refuse a different definition."""
        definition = json.loads(json.dumps(definition))  # as it reads back from the file
        path = folder / STATE_FILE
        if not path.exists():
            return cls(path, definition, [])
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise LmforgeError(f"{path}: not readable as JSON ({exc}); move it away to start "
                               f"a new sweep there") from None
        if saved.get("format") != STATE_FORMAT:
            raise LmforgeError(f"{path}: expected format {STATE_FORMAT}, found "
                               f"{saved.get('format')!r}")
        stored = saved["definition"]
        changed = [f"{key}: saved {stored.get(key)!r}, now {value!r}"
                   for key, value in definition.items() if stored.get(key) != value]
        if changed:
            raise LmforgeError(
                f"{path} holds a sweep defined differently, so it cannot continue with these "
                f"settings:\n  " + "\n  ".join(changed) + "\nrerun it with its saved "
                "settings, or give the new sweep another name (--set name=...); nothing was "
                "changed")
        return cls(path, definition, saved["trials"])

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(
            {"format": STATE_FORMAT, "definition": self.definition, "trials": self.trials},
            indent=2) + "\n")

    def add(self, number: int, params: dict[str, Any], run_dir: Path,
            optuna_trial: int | None) -> dict[str, Any]:
        record = {"number": number, "params": params, "status": "running", "objective": None,
                  "run_dir": str(run_dir), "seconds": 0.0, "error": None,
                  "optuna_trial": optuna_trial}
        self.trials.append(record)
        self.save()
        return record
