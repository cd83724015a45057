"""The data stage: stream a source through the preprocessors into train/val/test, with a report."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmforge
from lmforge.atomic import atomic_dir, atomic_write_text, is_complete
from lmforge.config import DataConfig, RunConfig
from lmforge.data.neardup import NearDuplicateIndex
from lmforge.data.split import SPLITS, SplitSettings, contiguous_bounds, hash_split
from lmforge.data.textkey import text_digest
from lmforge.errors import ConfigError
from lmforge.interfaces.data import Preprocessor, Record
from lmforge.run.folder import check_run_folder

# Bump when the layout or meaning of prepared files changes, so old caches are not reused.
DATA_FORMAT = 1

Progress = Callable[[int, int], None]  # (records read, bytes read)


@dataclass
class PreparedData:
    """Where the prepared splits are and what preparing them found."""

    folder: Path
    report: dict[str, Any]

    @property
    def cached(self) -> bool:
        return bool(self.report["cache"]["hit"])

    def split_path(self, split: str) -> Path:
        return self.folder / f"{split}.jsonl"

    def records(self, split: str) -> Iterator[Record]:
        with open(self.split_path(split), encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


class _StepCounter:
    """Records and characters in and out of one step."""

    def __init__(self, name: str, step: Preprocessor | None = None):
        self.name, self.step = name, step
        self.records_in = self.records_out = self.chars_in = self.chars_out = self.changed = 0

    def through(self, records: Iterable[Record], precomputed: deque | None = None
                ) -> Iterator[Record]:
        """The step applied to `records`; `precomputed` holds what workers precomputed for each
        record in turn (see `lmforge.data.workers`)."""
        process = self.step.process if self.step else None
        for record in records:
            self.records_in += 1
            self.chars_in += len(record["text"])
            if process is not None:
                result = (process(record) if precomputed is None
                          else process(record, precomputed.popleft()))
                if result is None:
                    continue
                if result["text"] != record["text"]:
                    self.changed += 1
                record = result
            self.records_out += 1
            self.chars_out += len(record["text"])
            yield record

    def merge(self, other: _StepCounter) -> None:
        """Add the figures of `other`, this step's counter in a worker, to this one's."""
        for name in ("records_in", "records_out", "chars_in", "chars_out", "changed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.step.merge(other.step)

    def report(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"step": self.name, "records_in": self.records_in,
                                   "records_out": self.records_out, "chars_in": self.chars_in,
                                   "chars_out": self.chars_out}
        if self.step is not None:
            figures["changed"] = self.changed
            figures["dropped"] = dict(sorted(self.step.dropped.items()))
            figures.update(self.step.report())
        return figures


def data_cache_key(data: DataConfig, source_fingerprint: str) -> str:
    """A hash of everything the prepared data depends on."""
    components = [data.source, *data.preprocess]
    payload = {"format": DATA_FORMAT, "source": data.source.to_dict(),
               # a new release of a component may prepare the same input differently
               "providers": [(c.entry.provider.distribution, c.entry.provider.version)
                             for c in components],
               "fingerprint": source_fingerprint,
               "preprocess": [step.to_dict() for step in data.preprocess],
               "split": data.split.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(config: RunConfig, *, force: bool = False, workers: int | None = None,
                 progress: Progress | None = None) -> PreparedData:
    """Prepare the config's data into `runs/NAME/data/prepared-KEY/`, reusing a complete cache;
    `workers` processes (default: `data.workers`) give the same files as one."""
    if config.data is None:
        raise ConfigError("the config has no 'data' section: name a data source under data.source")
    check_run_folder(config.run_dir)
    data = config.data
    workers = workers or data.workers
    source = data.source.create()
    key = data_cache_key(data, source.fingerprint())
    data_dir = config.run_dir / "data"
    folder = data_dir / f"prepared-{key}"
    if is_complete(folder) and not force:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        report["cache"] = {"key": key, "hit": True, "folder": str(folder)}
        return PreparedData(folder, report)

    started = time.perf_counter()
    steps = [_StepCounter(f"source:{data.source.entry.name}")]
    steps += [_StepCounter(c.entry.name, c.create()) for c in data.preprocess]
    input_bytes = 0

    def read() -> Iterator[Record]:
        nonlocal input_bytes
        for record in source.records():
            text = record["text"]
            input_bytes += len(text) if text.isascii() else len(text.encode("utf-8"))
            if progress is not None and steps[0].records_in % 1024 == 0:
                progress(steps[0].records_in, input_bytes)
            yield record

    with atomic_dir(folder) as tmp, ExitStack() as pool:
        writer = _SplitWriter(tmp, data)
        stream, local, precomputed = steps[0].through(read()), steps[1:], None
        if workers > 1:
            from lmforge.data.workers import offload  # it imports this module

            stream, local, precomputed = pool.enter_context(
                offload(stream, local, data, workers, writer))
        for i, step in enumerate(local):
            stream = step.through(stream, precomputed if i == 0 else None)
        if data.split.mode == "hash":
            for record in stream:
                writer.write(None, record)
        else:
            _write_contiguous(tmp, stream, writer, data)
        split_figures = writer.close()
        seconds = time.perf_counter() - started
        report = {
            "lmforge": lmforge.__version__,
            "source": {"type": data.source.entry.name, "records": steps[0].records_out,
                       "chars": steps[0].chars_out, "bytes": input_bytes,
                       "skipped": dict(sorted(source.skipped.items()))},
            "steps": [step.report() for step in steps[1:]],
            "duplicates": _duplicate_figures(steps[1:]),
            "splits": split_figures,
            "labels": writer.label_counts(),
            "leakage": writer.leakage(),
            "seconds": round(seconds, 3),
            "mb_per_s": round(input_bytes / 1e6 / seconds, 3) if seconds > 0 else None,
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    atomic_write_text(data_dir / "report.json", json.dumps(report, indent=2))
    report["cache"] = {"key": key, "hit": False, "folder": str(folder)}
    report["workers"] = workers  # not in report.json: the files do not depend on it
    return PreparedData(folder, report)


def _duplicate_figures(steps: list[_StepCounter]) -> dict[str, Any]:
    seen = steps[0].records_in if steps else 0
    dropped = Counter()
    for step in steps:
        for reason, count in step.step.dropped.items():
            if "duplicate" in reason:
                dropped[reason] += count
    total = sum(dropped.values())
    return {**dict(sorted(dropped.items())), "total": total,
            "rate": round(total / seen, 6) if seen else 0.0}


def _write_contiguous(tmp: Path, stream: Iterable[Record], writer: _SplitWriter,
                      data: DataConfig) -> None:
    """Spool the stream once to learn its length, then cut it at character offsets."""
    spool = tmp / "all.jsonl.spool"
    total = 0
    with open(spool, "w", encoding="utf-8") as handle:
        for record in stream:
            total += len(record["text"])
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    val_start, test_start = contiguous_bounds(total, data.split)
    offset = 0
    with open(spool, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            text, start = record["text"], offset
            offset += len(text)
            # a record that straddles a boundary is cut there, so the shares are exact
            for split, lo, hi in (("train", 0, val_start), ("val", val_start, test_start),
                                  ("test", test_start, total)):
                piece = text[max(lo - start, 0):max(hi - start, 0)]
                if piece:
                    writer.write(split, {**record, "text": piece})
    spool.unlink()


class _SplitWriter:
    """Writes records into split files and keeps the figures the report and leakage check need."""

    def __init__(self, folder: Path, data: DataConfig):
        self.settings = data.split
        self._stack = ExitStack()  # the split files, closed by close()
        self.handles = {split: self._stack.enter_context(open(  # noqa: SIM115
            folder / f"{split}.jsonl", "w", encoding="utf-8")) for split in SPLITS}
        self.records, self.chars = Counter(), Counter()
        self.labels: dict[str, Counter] = {s: Counter() for s in SPLITS}
        self.digests: dict[str, set[int]] = {s: set() for s in SPLITS}
        self.signatures: dict[str, list] = {s: [] for s in SPLITS}
        self.near = leakage_index(self.settings)
        self.known: dict[str, tuple] = {}  # text -> its text_keys, computed by workers

    def write(self, split: str | None, record: Record) -> None:
        """Write `record` into `split`, or in hash mode (None) the split its text hashes to."""
        text = record["text"]
        hashed, digest, signature = self.known.get(text) or text_keys(text, self.settings,
                                                                       self.near)
        split = split or hashed
        self.handles[split].write(json.dumps(record, ensure_ascii=False) + "\n")
        self.records[split] += 1
        self.chars[split] += len(text)
        if "label" in record:
            self.labels[split][str(record["label"])] += 1
        if self.near is not None:
            self.digests[split].add(digest)
            if split == "train":
                self.near.insert(self.records[split], signature)
            else:
                self.signatures[split].append(signature)

    def close(self) -> dict[str, Any]:
        self._stack.close()
        total = sum(self.records.values()) or 1
        return {s: {"records": self.records[s], "chars": self.chars[s],
                    "share": round(self.records[s] / total, 6)} for s in SPLITS}

    def label_counts(self) -> dict[str, dict[str, int]]:
        if not any(self.labels.values()):
            return {}
        return {s: dict(sorted(self.labels[s].items())) for s in SPLITS}

    def leakage(self) -> dict[str, Any]:
        if not self.settings.leakage_check:
            return {"checked": False}
        figures: dict[str, Any] = {"checked": True, "near_threshold": self.settings.near_threshold}
        for split in ("val", "test"):
            earlier = set().union(*(self.digests[s] for s in SPLITS[:SPLITS.index(split)]))
            figures[f"{split}_exact_in_earlier_splits"] = len(self.digests[split] & earlier)
            figures[f"{split}_near_train"] = sum(
                1 for signature in self.signatures[split] if self.near.query(signature))
        return figures


def leakage_index(settings: SplitSettings) -> NearDuplicateIndex | None:
    """The near-duplicate index of the leakage check, or None when it is off."""
    return NearDuplicateIndex(settings.near_threshold) if settings.leakage_check else None


def text_keys(text: str, settings: SplitSettings, near: NearDuplicateIndex | None) -> tuple:
    """What the split writer derives from a text: its split in hash mode and, for the leakage
    check (`near`, from `leakage_index`), its digest and signature. A pure function of the text,
    so workers may compute it ahead."""
    split = hash_split(text, settings) if settings.mode == "hash" else None
    if near is None:
        return split, None, None
    return split, int.from_bytes(text_digest(text)[:8], "big"), near.signature(text)
