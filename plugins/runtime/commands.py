"""What `lmforge predict` and `lmforge generate` do with a bundle folder instead of a run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from lmforge.errors import LmforgeError
from lmforge.plugins.runtime.bundle import load_bundle
from lmforge.plugins.runtime.classify import Classifier
from lmforge.plugins.runtime.generate import generate_text


def predict_bundle(bundle_dir: str, texts: Sequence[str] = (), data_file: str | None = None,
                   batch_size: int = 64, stdin: TextIO | None = None) -> list[dict[str, Any]]:
    """`lmforge.plugins.tasks.commands.predict_texts` for a bundle: each input's text (as the
    run's preprocessors left it), label and probabilities, and its true label when a data file
    has one. A data file is read with the run's data source as the manifest records it."""
    bundle = load_bundle(bundle_dir)
    classifier = Classifier(bundle)
    if data_file is not None:
        records = bundle.file_records(Path(data_file))
    else:
        lines = texts or [line.rstrip("\n") for line in stdin or () if line.strip()]
        records = [{"text": text} for text in lines]
    if not records:
        raise LmforgeError("no text to classify: give --text, --file, or lines on standard input")
    prepared = bundle.preprocess([record["text"] for record in records])
    predictions = classifier.predict_preprocessed(prepared, batch_size)
    for record, text, prediction in zip(records, prepared, predictions, strict=True):
        prediction["text"] = text
        if record.get("label") is not None:
            prediction["true_label"] = str(record["label"])
    return predictions


def generate_bundle(bundle_dir: str, prompt: str, **sampling: Any) -> Iterator[str]:
    """The continuation of `prompt` by a bundle's language model, streamed as text; the
    arguments are `lmforge generate`'s. The bundle loads and the arguments are checked before
    this returns."""
    return generate_text(load_bundle(bundle_dir), prompt, **sampling)
