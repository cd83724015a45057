"""The data stage: split stability, contiguous split, report figures, leakage and the cache."""

from __future__ import annotations

import json

import pytest

from lmforge.config import resolve
from lmforge.data.prepare import prepare_data
from lmforge.data.split import SplitSettings, hash_split
from lmforge.errors import DataError


def paragraphs(count: int, offset: int = 0) -> list[str]:
    return [f"Paragraph {i} says something different: word{i} token{i * 7} item{i * 13}."
            for i in range(offset, offset + count)]


def config_for(tmp_path, registry, texts, *, split=None, preprocess=(), unit="paragraph",
               name="t", source_text=None):
    corpus = tmp_path / f"{name}.txt"
    corpus.write_text(source_text if source_text is not None else "\n\n".join(texts) + "\n",
                      encoding="utf-8")
    raw = {"name": name, "runs_dir": str(tmp_path / "runs"),
           "data": {"source": {"type": "text", "paths": [str(corpus)], "unit": unit},
                    "preprocess": list(preprocess), "split": split or {}}}
    return resolve(raw, registry)


def split_of(prepared) -> dict[str, str]:
    return {r["text"]: split for split in ("train", "val", "test")
            for r in prepared.records(split)}


def test_hash_split_is_stable_under_reordering_and_appending(tmp_path, registry):
    texts = paragraphs(300)
    first = split_of(prepare_data(config_for(tmp_path, registry, texts, name="a")))
    reordered = split_of(prepare_data(config_for(tmp_path, registry, texts[::-1], name="b")))
    appended = split_of(prepare_data(
        config_for(tmp_path, registry, texts + paragraphs(100, offset=300), name="c")))
    assert reordered == first
    assert {t: appended[t] for t in first} == first
    shares = {s: sum(1 for v in first.values() if v == s) / len(first) for s in ("val", "test")}
    assert 0.01 < shares["val"] < 0.12 and 0.01 < shares["test"] < 0.12


def test_hash_split_depends_on_normalized_text_and_seed():
    settings = SplitSettings(val=0.3, test=0.3)
    texts = paragraphs(200)
    assert all(hash_split(t, settings) == hash_split(f"  {t.upper()} ", settings) for t in texts)
    reseeded = SplitSettings(val=0.3, test=0.3, seed=1)
    assert any(hash_split(t, settings) != hash_split(t, reseeded) for t in texts)


def test_contiguous_split_cuts_one_long_text_at_exact_shares(tmp_path, registry):
    text = "".join(f"line {i:04d} of the novel\n" for i in range(1000))
    config = config_for(tmp_path, registry, [], unit="file", source_text=text,
                        split={"mode": "contiguous", "val": 0.1, "test": 0.0})
    prepared = prepare_data(config)
    train = [r["text"] for r in prepared.records("train")]
    val = [r["text"] for r in prepared.records("val")]
    assert "".join(train) + "".join(val) == text.strip()
    assert len("".join(val)) == round(len(text.strip()) * 0.1)
    assert list(prepared.records("test")) == []


def test_report_counts_every_step_and_duplicates(tmp_path, registry):
    texts = paragraphs(50)
    corpus = texts + [texts[0].upper(), "tiny"]
    config = config_for(tmp_path, registry, corpus, preprocess=[
        {"type": "normalize"}, {"type": "filter", "min_chars": 10}, {"type": "dedup"}])
    report = prepare_data(config).report
    assert report["source"]["records"] == 52
    normalize, filter_step, dedup = report["steps"]
    assert (filter_step["records_in"], filter_step["records_out"]) == (52, 51)
    assert filter_step["dropped"] == {"too_short_chars": 1}
    assert (dedup["records_in"], dedup["records_out"]) == (51, 50)
    assert report["duplicates"]["total"] == 1
    assert sum(s["records"] for s in report["splits"].values()) == 50
    assert report["leakage"]["val_exact_in_earlier_splits"] == 0
    saved = json.loads((config.run_dir / "data" / "report.json").read_text())
    assert saved["splits"] == report["splits"]


def test_labels_are_counted_per_split(tmp_path, registry):
    rows = ["text\tlabel"] + [f"{t}\t{'pos' if i % 3 else 'neg'}"
                              for i, t in enumerate(paragraphs(90))]
    path = tmp_path / "rows.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    raw = {"name": "labels", "runs_dir": str(tmp_path / "runs"),
           "data": {"source": {"type": "tsv", "paths": [str(path)], "label_column": "label"}}}
    report = prepare_data(resolve(raw, registry)).report
    totals = {label: sum(counts.get(label, 0) for counts in report["labels"].values())
              for label in ("neg", "pos")}
    assert totals == {"neg": 30, "pos": 60}


def test_leakage_check_finds_near_duplicates_across_splits(tmp_path, registry):
    base = " ".join(f"word{i}" for i in range(100))
    # one word in a hundred changed: Jaccard about 0.9 over 5-word shingles
    variants = [base.replace("word50 ", f"changed{i} ") for i in range(40)]
    config = config_for(tmp_path, registry, variants, split={"val": 0.3, "test": 0.3})
    leakage = prepare_data(config).report["leakage"]
    assert leakage["val_near_train"] > 0 and leakage["test_near_train"] > 0
    assert leakage["val_exact_in_earlier_splits"] == 0


def test_second_prepare_is_a_cache_hit_until_data_or_settings_change(tmp_path, registry):
    config = config_for(tmp_path, registry, paragraphs(20))
    first = prepare_data(config)
    assert not first.cached
    second = prepare_data(config)
    assert second.cached and second.folder == first.folder
    assert second.report["splits"] == first.report["splits"]
    assert not prepare_data(config, force=True).cached
    changed = config_for(tmp_path, registry, paragraphs(21))
    assert not prepare_data(changed).cached
    resplit = config_for(tmp_path, registry, paragraphs(20), split={"val": 0.2})
    assert prepare_data(resplit).folder != first.folder


def test_incomplete_folder_is_not_reused(tmp_path, registry):
    config = config_for(tmp_path, registry, paragraphs(20))
    prepared = prepare_data(config)
    (prepared.folder / "COMPLETE").unlink()
    again = prepare_data(config)
    assert not again.cached and (again.folder / "COMPLETE").exists()


def test_strict_source_error_leaves_no_partial_output(tmp_path, registry):
    config = config_for(tmp_path, registry, [], source_text="ok\n\n\xff\n")
    (tmp_path / "t.txt").write_bytes(b"good paragraph\n\n\xff broken\n")
    with pytest.raises(DataError, match="t.txt:3"):
        prepare_data(config)
    assert not list((config.run_dir / "data").glob("prepared-*"))
