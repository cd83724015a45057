"""`lmforge eval`: score a trained run on a split or on a data file, into RUN/eval.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.host.registry import Registry
from lmforge.run.folder import EVAL_FILE
from lmforge.run.pipeline import LoadedRun, load_run, print_figures, report


def _file_tokens(path: Path, tokenizer, registry: Registry) -> tuple[np.ndarray, int]:
    """Tokens of a text file (eos after it, as in training) and its UTF-8 byte count."""
    from lmforge.plugins.tasks.token_cache import encode_documents

    if not path.is_file():
        raise LmforgeError(f"{path}: no such file")
    source = registry.get("data_source", "text").create(
        {"paths": [str(path)], "unit": "file"})
    chunks = list(encode_documents((r["text"] for r in source.records()), tokenizer))
    if not chunks:
        return np.zeros(0, dtype=np.int64), 0
    return np.concatenate([ids for ids, _, _ in chunks]), sum(n for _, _, n in chunks)


def _score_file(loaded: LoadedRun, path: Path, batch_size: int, registry: Registry
                ) -> dict[str, Any]:
    """A language model's loss on a text file; a classifier's metrics on a labelled file."""
    from lmforge.run.inputs import read_file_records

    task = loaded.task
    if hasattr(task, "evaluate_records"):
        records = read_file_records(loaded.config, path, registry)
        return task.evaluate_records(loaded.model, records, batch_size, str(path))
    if hasattr(task, "evaluate_tokens"):
        tokens, n_bytes = _file_tokens(path, loaded.tokenizer, registry)
        return task.evaluate_tokens(loaded.model, tokens, n_bytes, batch_size)
    raise LmforgeError(f"task {loaded.config.components['task'].entry.name!r} cannot score a "
                       f"data file")


def evaluate_command(run_dir: str, registry: Registry, *, split: str = "val",
                     data_file: str | None = None,
                     batch_size: int = 16, console: Console | None = None) -> dict[str, Any]:
    """Score the run's last checkpoint, add the figures to RUN/eval.json and show them."""
    run_dir = Path(run_dir)
    if data_file is not None:
        # a data file needs only the run folder: it works where the training data is gone
        loaded = load_run(run_dir, registry, with_data=False)
        figures = _score_file(loaded, Path(data_file), batch_size, registry)
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
        report(loaded.task, run_dir, {key: figures}, console)
    return {key: figures}
