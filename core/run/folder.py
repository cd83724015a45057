"""The run folder: the files every trainer writes, and that eval, predict and plugins read.

    runs/NAME/config.yaml        the resolved config (the pipeline writes it)
    runs/NAME/model_spec.json    what the model was built from (the pipeline)
    runs/NAME/tokenizer.json     the trained tokenizer (the pipeline)
    runs/NAME/data/tokens-KEY/   a task's token caches, rebuilt when missing (`lmforge runs clean`
                                 deletes them)
    runs/NAME/checkpoints/step-N/  weights, trainer state and meta (a trainer, through
                                 lmforge.run.checkpoint); `load_run` takes the latest complete one
    runs/NAME/metrics.jsonl      one JSON object per event, written by a trainer through its
                                 `MetricsLog` callback: {"event": "run" | "train" | "eval",
                                 "step": N, ...};
                                 "eval" events carry "val_loss", which the search prunes on
    runs/NAME/eval.json          figures per split or data file (the pipeline and `lmforge eval`)
    runs/NAME/export/            the deployable bundle (the config's exporter, `lmforge export`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.interfaces.callback import Callback
from lmforge.settings import NoSettings

CONFIG_FILE = "config.yaml"
SPEC_FILE = "model_spec.json"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
EXPORT_DIR = "export"
TOKEN_CACHE_PREFIX = "tokens-"


def check_run_folder(run_dir: Path) -> None:
    """Refuse to write into an existing folder that is not a run folder: a config's `runs_dir`
    and `name` may point anywhere, and nothing lmforge did not write may be touched."""
    if (run_dir.is_dir() and any(run_dir.iterdir())
            and not any((run_dir / name).exists() for name in (CONFIG_FILE, "data"))):
        raise LmforgeError(f"{run_dir} exists and is not a run folder (it has no {CONFIG_FILE} "
                           f"or data/): lmforge writes only into its own folders; choose "
                           f"another run `name` or `runs_dir`")


class MetricsLog(Callback):
    """metrics.jsonl, the callback every trainer runs first: a session keeps the lines up to the
    step it resumes from (none when it starts afresh), then appends one line per event."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(NoSettings())
        self.path = Path(run_dir) / METRICS_FILE
        self.records: list[dict[str, Any]] = []
        self._handle = None  # open from the start of a session to its end

    def on_fit_start(self, context: Any, record: dict[str, Any]) -> None:
        kept = read_jsonl(self.path) if record.get("resumed") else []
        self.records = [r for r in kept if r.get("step", 0) <= record["step"]]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed at fit end
        self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    on_train_log = on_eval = write

    def on_fit_end(self, summary: dict[str, Any] | None) -> None:
        if self._handle is not None:
            self._handle.close()

    def last(self, event: str) -> dict[str, Any] | None:
        return next((r for r in reversed(self.records) if r.get("event") == event), None)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a line cut short by a killed writer is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # the last line of a process killed mid-write
    return [r for r in records if isinstance(r, dict)]


def read_metrics(run_dir: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The events a run's trainer logged so far, oldest first; only `event` ones if given."""
    records = read_jsonl(Path(run_dir) / METRICS_FILE)
    return [r for r in records if event is None or r.get("event") == event]
