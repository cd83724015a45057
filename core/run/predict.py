"""`lmforge predict`: labels and probabilities from a trained classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from lmforge.errors import LmforgeError
from lmforge.host.registry import Registry
from lmforge.run.pipeline import load_run


def predict_texts(run_dir: str, registry: Registry, texts: tuple[str, ...] = (),
                  data_file: str | None = None,
                  batch_size: int = 64, stdin: TextIO | None = None) -> list[dict[str, Any]]:
    """Each input's text, predicted label and label probabilities (and its true label when a
    data file has one). Inputs: `texts`, the records of `data_file`, or the lines of `stdin`;
    they go through the run's text-rewriting preprocessors first, as in training."""
    from lmforge.run.inputs import preprocess_for_inference, read_file_records, texts_as_records

    loaded = load_run(Path(run_dir), registry, with_data=False)
    task = loaded.task
    if not task.predicts_labels:
        raise LmforgeError(f"{run_dir} holds a {loaded.config.components['task'].entry.name} "
                           f"model, which does not predict labels; use `lmforge generate`")
    if data_file is not None:
        records = read_file_records(loaded.config, Path(data_file), registry)
    else:
        lines = texts or tuple(line.rstrip("\n") for line in stdin or () if line.strip())
        records = preprocess_for_inference(loaded.config, texts_as_records(lines))
    if not records:
        raise LmforgeError("no text to classify: give --text, --file, or lines on standard input")
    predictions = task.predict(loaded.model, [r["text"] for r in records], batch_size)
    for record, prediction in zip(records, predictions, strict=True):
        prediction["text"] = record["text"]
        if record.get("label") is not None:
            prediction["true_label"] = str(record["label"])
    return predictions
