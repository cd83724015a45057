"""The data stage in worker processes: the same split files and report as in one process."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest

from lmforge.config import resolve
from lmforge.data import workers
from lmforge.data.prepare import data_cache_key, prepare_data
from lmforge.errors import DataError, LmforgeError
from lmforge.host.registry import Provider, Registry
from lmforge.interfaces.data import Preprocessor, Record
from lmforge.run.pipeline import config_hash

TIMINGS = ("seconds", "mb_per_s")
WORDS = ["letter", "morning", "garden", "sister", "ball", "carriage", "fortune", "marriage",
         "cousin", "estate", "evening", "walk", "visit", "house", "dinner", "music", "officer",
         "village", "friend", "pleasure"]


class CountVowels(Preprocessor):
    """A per_record step with a figure of its own, which its merge adds up."""

    per_record = True

    def __init__(self, settings):
        super().__init__(settings)
        self.vowels = 0

    def process(self, record: Record) -> Record | None:
        self.vowels += sum(record["text"].count(v) for v in "aeiou")
        return record if "zzz" not in record["text"] else self.drop("zzz")

    def merge(self, other: CountVowels) -> None:
        super().merge(other)
        self.vowels += other.vowels

    def report(self) -> dict[str, Any]:
        return {"vowels": self.vowels}


class Explode(Preprocessor):
    """Fails on the record that asks for it, as a strict check would."""

    per_record = True

    def process(self, record: Record) -> Record | None:
        if "EXPLODE" in record["text"]:
            raise DataError(f"{record['source']}: this record explodes")
        return record


class Die(Preprocessor):
    """Kills the (worker) process that processes the record asking for it."""

    per_record = True

    def process(self, record: Record) -> Record | None:
        if "DIE" in record["text"]:
            os._exit(3)
        return record


@pytest.fixture
def steps_registry(registry) -> Registry:
    mine = Registry()
    for entry in registry.entries():
        mine.add(entry.kind, entry.name, entry.component, entry.settings, entry.provider)
    provider = Provider("tests", "tests", "0", False)
    for name, step in (("count-vowels", CountVowels), ("explode", Explode), ("die", Die)):
        mine.add("preprocessor", name, step, None, provider)
    return mine


@pytest.fixture(autouse=True)
def chunks_sent(monkeypatch) -> list:
    """Chunks of a few dozen records, so a few thousand records make many chunks in flight;
    the list of the chunks sent to worker processes."""
    monkeypatch.setattr(workers, "CHUNK_CHARS", 4000)
    sent = []
    submit = workers.ProcessPoolExecutor.submit

    def counting_submit(pool, function, chunk):
        sent.append(chunk)
        return submit(pool, function, chunk)

    monkeypatch.setattr(workers.ProcessPoolExecutor, "submit", counting_submit)
    return sent


def corpus_rows(count: int = 3000) -> list[dict]:
    """Records with exact and near duplicates, ones the filter and normalize drop, HTML that
    clean rewrites, and labels."""
    draw = random.Random(7)
    rows, plain = [], []
    for i in range(count):
        text = " ".join(draw.choice(WORDS) for _ in range(draw.randint(20, 50))) + f" n{i}."
        kind = i % 10
        if kind == 3 and plain:  # an exact duplicate after normalization
            text = "  " + draw.choice(plain).upper() + "\n"
        elif kind == 5 and plain:  # a near duplicate: one word changed
            words = draw.choice(plain).split()
            words[-2] = "changed"
            text = " ".join(words)
        elif kind == 7:
            text = draw.choice(["tiny", "\u200b \t", "<p>a visit</p>", "zzz " + text])
        elif kind == 9:
            text = f"<div class='x'>{text}</div> see https://example.com/{i}"
        else:
            plain.append(text)
        rows.append({"text": text, "label": draw.choice(["pos", "neg"])})
    return rows


def prepare(tmp_path, registry, rows, *, workers: int, mode: str = "hash", preprocess=None,
            name: str = "w"):
    path = tmp_path / "corpus.jsonl"
    if not path.exists():
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    raw = {"name": name, "runs_dir": str(tmp_path / f"runs-{workers}"),
           "data": {"source": {"type": "jsonl", "paths": [str(path)], "label_field": "label"},
                    "preprocess": preprocess if preprocess is not None else [
                        "normalize", "clean", {"type": "filter", "min_chars": 20},
                        "count-vowels", {"type": "dedup", "near": True, "threshold": 0.7},
                        "stopwords"],
                    "split": {"mode": mode, "val": 0.1, "test": 0.1, "near_threshold": 0.7},
                    "workers": workers}}
    return prepare_data(resolve(raw, registry))


def outputs(prepared) -> tuple[dict, dict]:
    files = {split: prepared.split_path(split).read_bytes() for split in ("train", "val", "test")}
    report = json.loads((prepared.folder / "report.json").read_text(encoding="utf-8"))
    for key in TIMINGS:
        report.pop(key)
    return files, report


@pytest.mark.parametrize(("preprocess", "mode"), [
    (None, "hash"),
    (None, "contiguous"),
    (["dedup", "normalize", "count-vowels"], "hash"),  # state first: the workers precompute
    (["normalize", {"type": "filter", "min_chars": 20}], "contiguous"),  # all in the workers
], ids=["mixed-hash", "mixed-contiguous", "stateful-first", "all-per-record"])
def test_workers_give_the_same_files_and_report_as_one_process(tmp_path, steps_registry, mode,
                                                              preprocess, chunks_sent):
    rows = corpus_rows()
    single = prepare(tmp_path, steps_registry, rows, workers=1, mode=mode, preprocess=preprocess)
    assert not chunks_sent
    files, report = outputs(single)
    assert "workers" not in report  # report.json does not depend on the processes used
    if preprocess is None:
        steps = {step["step"]: step for step in report["steps"]}
        assert steps["normalize"]["dropped"]["empty"] > 30
        assert steps["filter"]["dropped"]["too_short_chars"] > 0
        assert steps["clean"]["changed"] >= 300 and steps["count-vowels"]["vowels"] > 10_000
        assert steps["dedup"]["exact_duplicates"] > 200 and steps["dedup"]["near_duplicates"] > 150
        assert report["leakage"]["checked"] and set(report["labels"]["val"]) == {"neg", "pos"}
    for count in (2, 3):
        parallel = prepare(tmp_path, steps_registry, rows, workers=count, mode=mode,
                           preprocess=preprocess)
        assert parallel.report["workers"] == count
        assert outputs(parallel) == (files, report)
        assert sum(map(len, chunks_sent)) == len(rows) and len(chunks_sent) > 50
        chunks_sent.clear()


def test_workers_do_not_change_the_cache_key_or_the_run_hash(tmp_path, steps_registry):
    rows = corpus_rows(200)
    two = prepare(tmp_path, steps_registry, rows, workers=2)
    path = tmp_path / "corpus.jsonl"
    raw = {"name": "w", "runs_dir": str(tmp_path / "runs-2"),
           "data": {"source": {"type": "jsonl", "paths": [str(path)], "label_field": "label"},
                    "preprocess": ["normalize", "clean", {"type": "filter", "min_chars": 20},
                                   "count-vowels", {"type": "dedup", "near": True,
                                                    "threshold": 0.7}, "stopwords"],
                    "split": {"val": 0.1, "test": 0.1, "near_threshold": 0.7}}}
    one = resolve(raw, steps_registry)
    assert one.data.workers == 1
    again = prepare_data(one)
    assert again.cached and again.folder == two.folder
    raw["data"]["workers"] = 2
    two_config = resolve(raw, steps_registry)
    source = one.data.source.create()
    assert data_cache_key(one.data, source.fingerprint()) == data_cache_key(
        two_config.data, source.fingerprint())
    raw.update(tokenizer={"type": "char"}, model={"type": "gpt"})
    hashes = {workers: config_hash(resolve({**raw, "data": {**raw["data"], "workers": workers}},
                                           steps_registry)) for workers in (1, 4)}
    assert hashes[1] == hashes[4]


def test_a_bad_record_in_strict_mode_names_the_same_file_and_line(tmp_path, steps_registry):
    rows = corpus_rows(2000)
    lines = [json.dumps(row) for row in rows]
    lines[1234] = '{"text": "no label here"}'
    messages = []
    for count in (1, 2):
        path = tmp_path / "corpus.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(DataError) as raised:
            prepare(tmp_path, steps_registry, rows, workers=count)
        messages.append(str(raised.value))
        assert not list((tmp_path / f"runs-{count}" / "w" / "data").glob("*prepared-*"))
    assert messages[0] == messages[1]
    assert "corpus.jsonl:1235: expected a field 'label'" in messages[0]


def test_an_error_raised_in_a_worker_is_the_one_process_error(tmp_path, steps_registry):
    rows = corpus_rows(2000)
    rows[1500]["text"] = rows[700]["text"] = "this one will EXPLODE when its turn comes"
    messages = []
    for count in (1, 2):
        with pytest.raises(DataError) as raised:
            prepare(tmp_path, steps_registry, rows, workers=count,
                    preprocess=["normalize", "dedup", "explode"])
        messages.append(str(raised.value))
    assert messages[0] == messages[1] == f"{tmp_path / 'corpus.jsonl'}:701: this record explodes"


def test_a_worker_that_dies_is_a_clear_error_and_writes_nothing(tmp_path, steps_registry):
    rows = corpus_rows(1000)
    rows[600]["text"] = "the worker that reads this record will DIE"
    with pytest.raises(LmforgeError, match="a data worker process died"):
        prepare(tmp_path, steps_registry, rows, workers=2, preprocess=["die", "dedup"])
    assert not list((tmp_path / "runs-2" / "w" / "data").glob("*prepared-*"))
