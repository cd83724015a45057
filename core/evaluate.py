"""`lmforge eval`: score a trained run on a split or on a text file, into RUN/eval.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.pipeline import load_run


def _file_tokens(path: Path, tokenizer) -> tuple[np.ndarray, int]:
    """Tokens of a text file (eos after it, as in training) and its UTF-8 byte count."""
    from lmforge.plugin_manager import get_host
    from lmforge.token_cache import encode_documents

    source = get_host().registry.get("data_source", "text").create(
        {"paths": [str(path)], "unit": "file"})
    chunks = list(encode_documents((r["text"] for r in source.records()), tokenizer))
    if not chunks:
        return np.zeros(0, dtype=np.int64), 0
    return np.concatenate([ids for ids, _, _ in chunks]), sum(n for _, _, n in chunks)


def evaluate_command(run_dir: str, *, split: str = "val", data_file: str | None = None,
                     batch_size: int = 16) -> dict[str, Any]:
    loaded = load_run(Path(run_dir))
    evaluate_tokens = getattr(loaded.task, "evaluate_tokens", None)
    if data_file is not None:
        if evaluate_tokens is None:
            raise LmforgeError(f"task {loaded.config.components['task'].entry.name!r} cannot "
                               f"score a text file")
        tokens, n_bytes = _file_tokens(Path(data_file), loaded.tokenizer)
        figures = evaluate_tokens(loaded.model, tokens, n_bytes, batch_size)
        key = f"file:{data_file}"
    else:
        figures = loaded.task.evaluate(loaded.model, split, batch_size)
        key = split
    figures["checkpoint"] = loaded.checkpoint.name
    path = Path(run_dir) / "eval.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = figures
    atomic_write_text(path, json.dumps(results, indent=2))
    return {key: figures}
