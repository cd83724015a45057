"""`lmforge eval`: score a trained run on a split or on a data file, into RUN/eval.json."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.host.registry import Registry
from lmforge.run.folder import EVAL_FILE
from lmforge.run.inputs import read_file_records
from lmforge.run.pipeline import load_run, print_figures


def evaluate_command(run_dir: str, registry: Registry, *, split: str = "val",
                     data_file: str | None = None,
                     batch_size: int = 16, console: Console | None = None) -> dict[str, Any]:
    """Score the run's last checkpoint, add the figures to RUN/eval.json and show them."""
    run_dir = Path(run_dir)
    if data_file is not None:
        data_path = Path(data_file)
        if not data_path.is_file():
            raise LmforgeError(f"{data_path}: no such file")
        # a data file needs only the run folder: it works where the training data is gone
        loaded = load_run(run_dir, registry, with_data=False)
        read_records = partial(read_file_records, loaded.config, registry=registry)
        figures = loaded.task.evaluate_file(loaded.model, data_path, batch_size, read_records)
        key = f"file:{data_file}"
    else:
        loaded = load_run(run_dir, registry)
        figures = loaded.task.evaluate(loaded.model, split, batch_size)
        key = split
    figures["checkpoint"] = loaded.checkpoint.name
    path = run_dir / EVAL_FILE
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = figures
    atomic_write_text(path, json.dumps(results, indent=2))
    if console is not None:
        print_figures(console, key, figures)
        loaded.task.write_report(run_dir, {key: figures}, console)
    return {key: figures}
