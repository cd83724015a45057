"""The data-stage interfaces: records, data sources and preprocessors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar, Literal, TypedDict

from pydantic import Field

from lmforge.errors import DataError
from lmforge.settings import NoSettings, Settings


class Record(TypedDict, total=False):
    """One document: its text, an optional label, and where it came from ("file:line")."""

    text: str
    label: Any
    source: str


class SourceSettings(Settings):
    """Settings every data source shares."""

    errors: Literal["strict", "skip"] = Field(
        "strict", description="strict: the first bad record fails the run, naming file and line; "
                              "skip: bad records are skipped and counted by reason")
    max_line_bytes: int = Field(
        1 << 20, ge=1, description="a longer line is a bad record (guards memory against "
                                   "files with no line breaks)")


class DataSource(ABC):
    """Streams records; memory must not grow with the size of the corpus.

    `suffixes` are the file name endings the source reads (".csv"; a trailing ".gz" is implied
    where the source decompresses): a file given to a trained run (`lmforge eval --data`,
    `lmforge predict --file`) is read by the source that declares its suffix. A source that
    reads no files declares none.
    """

    Settings = SourceSettings
    suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: SourceSettings):
        self.settings = settings
        self.skipped: Counter[str] = Counter()

    @abstractmethod
    def records(self) -> Iterator[Record]:
        """Yield records in a deterministic order."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash of everything the records depend on: equal fingerprints, equal records."""

    def bad(self, where: str, reason: str, message: str) -> None:
        """Report a bad record: raise in strict mode, count it under `reason` in skip mode."""
        if self.settings.errors == "strict":
            raise DataError(f"{where}: {message} (set errors: skip on the data source to skip "
                            f"and count such records instead)")
        self.skipped[reason] += 1


class Preprocessor(ABC):
    """Transforms or drops one record at a time; the pipeline counts records and characters.

    A step that only rewrites text (normalizing, cleaning) sets `at_inference`: texts given to
    a trained model (`lmforge predict`, `eval --data`) go through it too, so the model sees text
    as it saw it in training. Steps that select records (filters, dedup) do not.

    With `data.workers` > 1, worker processes take chunks of records. A step whose `process`
    reads nothing but the record and its settings sets `per_record`: a worker builds a fresh
    instance per chunk from the settings (so keep construction cheap; class and settings must
    pickle) and the main process folds each into its own with `merge`, in input order. Steps
    that carry state from record to record (dedup's seen-set) run in the main process in input
    order; `precompute` moves what they derive from one record alone into the workers.
    """

    Settings = NoSettings
    at_inference: ClassVar[bool] = False
    per_record: ClassVar[bool] = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dropped: Counter[str] = Counter()

    @abstractmethod
    def process(self, record: Record) -> Record | None:
        """Return the record (changed or not), or `self.drop(reason)` to remove it. A step that
        overrides `precompute` may be called as `process(record, precomputed)` instead."""

    def precompute(self, record: Record) -> Any:
        """What `process` derives from `record` alone (a hash, a signature): with workers, a
        worker computes it and the main process passes it to `process`. Its result must not
        depend on earlier records, and `process` must decide alike with or without it."""
        return None

    def drop(self, reason: str) -> None:
        """Count a dropped record under `reason`; returns None, so `return self.drop(...)`."""
        self.dropped[reason] += 1
        return None

    def merge(self, other: Preprocessor) -> None:
        """Add the figures of `other`, an instance of this `per_record` step that processed a
        later chunk in a worker, to this one's. The default sums `dropped`; a step whose
        `report` reads more state adds that too, so the report matches one process's."""
        self.dropped.update(other.dropped)

    def report(self) -> dict[str, Any]:
        """Figures beyond the counts the pipeline keeps (e.g. duplicate rates)."""
        return {}
