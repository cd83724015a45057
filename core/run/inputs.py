"""Texts given to a trained run from outside its prepared data, read and cleaned as in training."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lmforge.config import RunConfig
from lmforge.errors import LmforgeError
from lmforge.host.registry import Entry, Registry
from lmforge.interfaces.data import Preprocessor, Record


def read_file_records(config: RunConfig, path: Path, registry: Registry) -> list[Record]:
    """The records of `path`, read with the run's own data-source settings where they apply
    (see `file_records`), through the run's text-rewriting preprocessors."""
    if config.data is None:
        raise LmforgeError(f"the run's config has no data section to read {path} with")
    run_source = config.data.source
    return preprocess_for_inference(config, file_records(
        path, run_source.entry, run_source.settings.model_dump(), registry))


def file_records(path: Path, run_entry: Entry, run_settings: dict[str, Any],
                 registry: Registry) -> Iterator[Record]:
    """The records of `path`, read with a run's data source (`run_entry`, with the settings
    `run_settings`, whose paths are ignored) where it applies.

    The source is the one whose `suffixes` hold the file's (a trailing .gz aside): the run's own
    type when it declares the suffix, else the one installed source that does; for other names,
    the run's own type. Of the run's source settings, a file of the same type
    takes them all; a file of another type takes those the run set away from their defaults and
    its own type has (text and label columns, label thresholds, ...), not format defaults such
    as the TSV delimiter. So a held-out file in the training format needs no options.
    """
    if not path.is_file():
        raise LmforgeError(f"{path}: no such file")
    entry = source_for(path, run_entry, registry)
    inherited = {key: value for key, value in run_settings.items()
                 if key != "paths" and key in entry.settings.model_fields
                 and (entry is run_entry or _customized(run_entry, key, value))}
    return entry.create({**inherited, "paths": [str(path)]}).records()


def source_for(path: Path, run_entry: Entry, registry: Registry) -> Entry:
    """The data source that reads `path`, chosen by the suffixes sources declare."""
    suffix = Path(path.name.removesuffix(".gz")).suffix.lower()
    if suffix in run_entry.component.suffixes:
        return run_entry
    claiming = [registry.get("data_source", name) for name in registry.names("data_source")]
    claiming = [entry for entry in claiming if suffix in entry.component.suffixes]
    if len(claiming) > 1:
        names = ", ".join(entry.name for entry in claiming)
        raise LmforgeError(f"{path}: sources {names} all read {suffix} files; convert the file "
                           f"to the run's own format ({run_entry.name})")
    return claiming[0] if claiming else run_entry


def _customized(entry, key: str, value) -> bool:
    """Whether a source setting differs from its default for that source type."""
    field = entry.settings.model_fields[key]
    return value != field.get_default(call_default_factory=True)


def preprocess_for_inference(config: RunConfig, records: Iterable[Record]) -> list[Record]:
    """Records through the run's preprocessors that rewrite text (`at_inference`); a text that
    such a step would drop (e.g. left empty) is kept as it was, since every input needs an
    answer."""
    preprocess = config.data.preprocess if config.data is not None else []
    return rewrite_records([c.create() for c in preprocess if c.entry.component.at_inference],
                           records)


def rewrite_records(steps: Sequence[Preprocessor], records: Iterable[Record]) -> list[Record]:
    """Records through text-rewriting preprocessor `steps` in order; a step that would drop a
    record leaves it as it was."""
    processed = []
    for record in records:
        for step in steps:
            record = step.process(record) or record
        processed.append(record)
    return processed


def texts_as_records(texts: Iterable[str]) -> list[Record]:
    return [{"text": text, "source": f"<input {i + 1}>"} for i, text in enumerate(texts)]
