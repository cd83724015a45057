"""Tests of the built-in data sources: text, jsonl, csv and tsv."""

import csv
import gzip
import json
import tracemalloc
import types
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from lmforge.errors import DataError
from tests.conftest import EXAMPLE_DATA

SENTIMENT = {"label_column": "score", "label_thresholds": [0], "label_names": ["neg", "pos"]}


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def source(registry):
    """Build a registered source: source("jsonl", path_or_paths, **settings)."""
    def build(name, paths, **settings):
        paths = paths if isinstance(paths, list) else [paths]
        return registry.get("data_source", name).create(
            {"paths": [str(path) for path in paths], **settings})
    return build


def texts(src) -> list[str]:
    return [record["text"] for record in src.records()]


def test_the_four_sources_are_registered_with_docs_and_settings(registry):
    for name in ["text", "jsonl", "csv", "tsv"]:
        entry = registry.get("data_source", name)
        assert entry.provider.builtin and entry.doc
        assert "paths" in entry.settings.model_fields
    assert registry.get("data_source", "tsv").settings.model_fields["delimiter"].default == "\t"


# text

def test_text_units(tmp_path, source):
    path = write(tmp_path / "a.txt", "one\ntwo\n\n\nthree\n  \nfour\n")
    assert texts(source("text", path, unit="line")) == ["one", "two", "three", "four"]
    assert texts(source("text", path, unit="paragraph")) == ["one\ntwo", "three", "four"]
    assert texts(source("text", path, unit="file")) == ["one\ntwo\n\n\nthree\n  \nfour"]


def test_text_source_names_the_first_line_of_each_document(tmp_path, source):
    path = write(tmp_path / "a.txt", "\none\ntwo\n\nthree\n")
    records = list(source("text", path).records())
    assert [r["source"] for r in records] == [f"{path}:2", f"{path}:5"]
    assert all(set(r) == {"text", "source"} for r in records)
    assert next(source("text", path, unit="file").records())["source"] == f"{path}:1"


def test_text_reads_folders_globs_and_gzip_in_sorted_order(tmp_path, source):
    write(tmp_path / "corpus" / "b.txt", "bee\n")
    write(tmp_path / "corpus" / "a.txt.gz", gzip.compress(b"ay\n"))
    write(tmp_path / "corpus" / "sub" / "c.txt", "sea\n")
    write(tmp_path / "corpus" / ".hidden.txt", "never\n")
    assert texts(source("text", tmp_path / "corpus")) == ["ay", "bee", "sea"]
    assert texts(source("text", tmp_path / "corpus" / "**" / "*.txt")) == ["bee", "sea"]


def test_bom_and_crlf_give_clean_text_in_every_source(tmp_path, source):
    bom = b"\xef\xbb\xbf"
    text = write(tmp_path / "a.txt", bom + b"one\r\ntwo\r\n\r\nthree\r\n")
    jsonl = write(tmp_path / "a.jsonl", bom + b'{"text": "one"}\r\n{"text": "two"}\r\n')
    table = write(tmp_path / "a.csv", bom + b'text,label\r\n"one\r\nline",x\r\ntwo,y\r\n')
    assert texts(source("text", text)) == ["one\ntwo", "three"]
    assert texts(source("jsonl", jsonl)) == ["one", "two"]
    assert list(source("csv", table, label_column="label").records()) == [
        {"text": "one\nline", "label": "x", "source": f"{table}:2"},
        {"text": "two", "label": "y", "source": f"{table}:4"}]


def test_a_bad_line_spoils_its_whole_paragraph_counted_once(tmp_path, source):
    path = write(tmp_path / "a.txt", b"good\n\nbad \xff\nworse \xfe\nsame paragraph\n\nfine\n")
    src = source("text", path, errors="skip")
    assert texts(src) == ["good", "fine"]
    assert src.skipped == Counter(invalid_utf8=1)
    with pytest.raises(DataError, match=f"{path}:3: expected UTF-8"):
        list(source("text", path).records())


def test_a_bad_line_spoils_its_whole_file_in_file_unit(tmp_path, source):
    bad = write(tmp_path / "a.txt", b"x" * 50 + b"\nfine\n" + b"y" * 50 + b"\n")
    good = write(tmp_path / "b.txt", "whole\nfile\n")
    src = source("text", tmp_path, unit="file", errors="skip", max_line_bytes=40)
    assert texts(src) == ["whole\nfile"]
    assert src.skipped == Counter(line_too_long=1)
    with pytest.raises(DataError, match=f"{bad}:1: expected at most max_line_bytes=40"):
        list(source("text", [bad, good], unit="file", max_line_bytes=40).records())


# jsonl

def test_jsonl_records_with_and_without_labels(tmp_path, source):
    path = write(tmp_path / "a.jsonl", '{"text": "a", "y": 1}\n\n  \n{"text": "b", "y": "two"}')
    assert list(source("jsonl", path, label_field="y").records()) == [
        {"text": "a", "label": 1, "source": f"{path}:1"},
        {"text": "b", "label": "two", "source": f"{path}:4"}]
    assert list(source("jsonl", path).records())[0] == {"text": "a", "source": f"{path}:1"}


def test_jsonl_custom_text_field(tmp_path, source):
    path = write(tmp_path / "a.jsonl", '{"body": "hello", "text": 5}\n')
    assert texts(source("jsonl", path, text_field="body")) == ["hello"]


# One bad record after (or among) good ones: (source, settings, file name, content,
# reason, line of the bad record, words the message must contain, good texts that survive).
BAD_INPUTS = [
    ("jsonl", {}, "a.jsonl", '{"text": "ok"}\n{"text": "x",}\n',
     "invalid_json", 2, "invalid JSON", ["ok"]),
    ("jsonl", {}, "a.jsonl", '{"text": "ok"}\n{"text": "cut sh',
     "truncated_line", 2, "looks truncated", ["ok"]),
    ("jsonl", {}, "a.jsonl", '{"text": "ok"}\n[1, 2]\n{"text": "ok2"}\n',
     "not_an_object", 2, "found a JSON array", ["ok", "ok2"]),
    ("jsonl", {}, "a.jsonl", '{"text": "ok"}\n{"body": "x", "id": 3}\n',
     "missing_field", 2, "'text', found fields: 'body', 'id'", ["ok"]),
    ("jsonl", {}, "a.jsonl", '{"text": "ok"}\n{"text": 3}\n',
     "not_a_string", 2, "found a JSON number", ["ok"]),
    ("jsonl", {"label_field": "y"}, "a.jsonl", '{"text": "ok", "y": 0}\n{"text": "x"}\n',
     "missing_field", 2, "expected a field 'y'", ["ok"]),
    ("jsonl", {"label_field": "y"}, "a.jsonl", '{"text": "ok", "y": 0}\n{"text": "x", "y": null}\n',
     "bad_label", 2, "found null", ["ok"]),
    ("jsonl", {}, "a.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n',
     "invalid_utf8", 2, "expected UTF-8", ["ok"]),
    ("jsonl", {"max_line_bytes": 20}, "a.jsonl", '{"text": "ok"}\n{"text": "' + "x" * 20 + '"}\n',
     "line_too_long", 2, "max_line_bytes=20", ["ok"]),
    ("text", {"unit": "line"}, "a.txt", b"ok\n\n\xffbad\nok2\n",
     "invalid_utf8", 3, "column 1", ["ok", "ok2"]),
    ("csv", {}, "a.csv", "text,label\nok,a\nc\nok2,b\n",
     "ragged_row", 3, "expected 2 fields as in the header, found 1", ["ok", "ok2"]),
    ("csv", SENTIMENT, "a.csv", "text,score\nok,1.5\nx,high\n",
     "bad_label", 3, "expected a number in column 'score', found 'high'", ["ok"]),
    ("csv", {"label_column": "label"}, "a.csv", "text,label\nok,a\nx, \n",
     "bad_label", 3, "found an empty value", ["ok"]),
    ("csv", {"max_line_bytes": 10}, "a.csv", 'text\nok\n"two\n' + "x" * 11 + '\nlines"\nok2\n',
     "line_too_long", 4, "max_line_bytes=10", ["ok", "ok2"]),
    ("tsv", {"text_column": "body"}, "a.tsv", "text\tlabel\nx\ty\n",
     "missing_column", 1, "column named 'body', found columns: 'text', 'label'", []),
]


@pytest.mark.parametrize("name, settings, file_name, content, reason, line, words, good",
                         BAD_INPUTS, ids=[f"{case[0]}-{case[4]}" for case in BAD_INPUTS])
def test_bad_input_fails_in_strict_mode_naming_file_and_line(
        tmp_path, source, name, settings, file_name, content, reason, line, words, good):
    path = write(tmp_path / file_name, content)
    with pytest.raises(DataError) as caught:
        list(source(name, path, **settings).records())
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: ") and words in message


@pytest.mark.parametrize("name, settings, file_name, content, reason, line, words, good",
                         BAD_INPUTS, ids=[f"{case[0]}-{case[4]}" for case in BAD_INPUTS])
def test_bad_input_is_counted_once_in_skip_mode(
        tmp_path, source, name, settings, file_name, content, reason, line, words, good):
    path = write(tmp_path / file_name, content)
    src = source(name, path, errors="skip", **settings)
    assert texts(src) == good
    assert src.skipped == Counter({reason: 1})


@pytest.mark.parametrize("name", ["text", "jsonl", "csv", "tsv"])
@pytest.mark.parametrize("content", [b"", b" \n\t\r\n\n"], ids=["zero_bytes", "whitespace"])
def test_an_empty_file_is_bad_input(tmp_path, source, name, content):
    empty = write(tmp_path / "a_empty", content)
    full = {"text": "hi\n", "jsonl": '{"text": "hi"}\n'}.get(name, "text\nhi\n")
    write(tmp_path / "b_full", full)
    with pytest.raises(DataError, match=f"{empty}: expected .*, found an empty file"):
        list(source(name, tmp_path).records())
    src = source(name, tmp_path, errors="skip")
    assert texts(src) == ["hi"]
    assert src.skipped == Counter(empty_file=1)


def test_skip_mode_counts_every_bad_record_once_by_reason(tmp_path, source):
    path = write(tmp_path / "a.jsonl", "\n".join([
        '{"text": "one"}', "{oops", '"just a string"', '{"text": "two"}', "[]", "{also bad",
        '{"title": "no text"}', '{"text": "three"}', '{"text": "cut']))
    src = source("jsonl", path, errors="skip")
    assert texts(src) == ["one", "two", "three"]
    expected = Counter(invalid_json=2, not_an_object=2, missing_field=1, truncated_line=1)
    assert src.skipped == expected
    assert texts(src) == ["one", "two", "three"] and src.skipped == expected


def test_a_valid_last_line_without_a_line_ending_is_fine(tmp_path, source):
    path = write(tmp_path / "a.jsonl", '{"text": "one"}\n{"text": "two"}')
    assert texts(source("jsonl", path)) == ["one", "two"]


# csv and tsv

def test_csv_quoted_fields_span_lines_and_keep_line_numbers(tmp_path, source):
    path = write(tmp_path / "a.csv", 'id,text\n1,"say ""hi"",\nthen\n\nbye"\n2,plain\n\n3,last\n')
    records = list(source("csv", path).records())
    assert [r["text"] for r in records] == ['say "hi",\nthen\n\nbye', "plain", "last"]
    assert [r["source"] for r in records] == [f"{path}:2", f"{path}:6", f"{path}:8"]


def test_label_thresholds_name_intervals_and_drop_exact_thresholds(tmp_path, source):
    path = write(tmp_path / "a.tsv", "text\tscore\na\t-2\nb\t0\nc\t0.5\nd\t-0\ne\t3\nf\t1\n")
    src = source("tsv", path, label_column="score", label_thresholds=[0, 1],
                 label_names=["neg", "mild", "pos"])
    labels = [(r["text"], r["label"]) for r in src.records()]
    assert labels == [("a", "neg"), ("c", "mild"), ("e", "pos")]
    assert src.skipped == Counter(on_threshold=3)


def test_on_threshold_is_not_an_error_in_strict_mode(tmp_path, source):
    path = write(tmp_path / "a.csv", "text,score\nzero,0\nhigh,2\n")
    src = source("csv", path, **SENTIMENT)
    assert [r["label"] for r in src.records()] == ["pos"]
    assert src.skipped == Counter(on_threshold=1)


def test_a_missing_column_is_reported_per_file(tmp_path, source):
    write(tmp_path / "a.csv", "text,label\none,x\n")
    wrong = write(tmp_path / "b.csv", "body,label\ntwo,y\nthree,z\n")
    write(tmp_path / "c.csv", "label,text\nw,four\n")
    src = source("csv", tmp_path, label_column="label", errors="skip")
    assert [(r["text"], r["label"]) for r in src.records()] == [("one", "x"), ("four", "w")]
    assert src.skipped == Counter(missing_column=1)
    with pytest.raises(DataError, match=f"{wrong}:1: expected a column named 'text'"):
        list(source("csv", tmp_path, label_column="label").records())


def test_an_unclosed_quote_fails_once_the_field_outgrows_the_csv_limit(tmp_path, source):
    src = source("csv", tmp_path / "a.csv")
    limit = max(csv.field_size_limit(), src.settings.max_line_bytes)
    lines = "x" * 999 + "\n"
    path = write(tmp_path / "a.csv", 'text\nok\n"never closed\n' + lines * (limit // 1000 + 2))
    with pytest.raises(DataError, match=f"{path}:3: expected well-formed CSV, found: field larger"):
        list(src.records())


def test_quotechar_none_makes_quotes_literal(tmp_path, source):
    path = write(tmp_path / "a.tsv", 'text\tid\n"quoted start\t1\nend"\t2\n')
    assert texts(source("tsv", path, quotechar=None)) == ['"quoted start', 'end"']


def test_csv_with_a_custom_delimiter(tmp_path, source):
    path = write(tmp_path / "a.csv", "text;label\nhello, world;x\n")
    assert texts(source("csv", path, delimiter=";")) == ["hello, world"]


@pytest.mark.parametrize("name, settings, words", [
    ("text", {"paths": []}, "at least 1 item"),
    ("text", {"paths": [" "]}, "found an empty one"),
    ("text", {"paths": ["a"], "unit": "sentence"}, "'file', 'line' or 'paragraph'"),
    ("text", {"paths": ["a"], "encoding": "latin-1"}, "Extra inputs are not permitted"),
    ("jsonl", {"paths": ["a"], "label_field": "text"}, "label_field to differ"),
    ("csv", {"paths": ["a"], "delimiter": ",,"}, "at most 1 character"),
    ("csv", {"paths": ["a"], "delimiter": '"'}, "other than a line break or the quote"),
    ("csv", {"paths": ["a"], "label_column": "text"}, "label_column to differ"),
    ("csv", {"paths": ["a"], "label_column": "s", "label_thresholds": [0]}, "together"),
    ("csv", {"paths": ["a"], "label_thresholds": [0], "label_names": ["a", "b"]},
     "expected a label_column"),
    ("csv", {"paths": ["a"], **SENTIMENT, "label_names": ["a", "b", "c"]},
     "3 names for 1 thresholds"),
    ("csv", {"paths": ["a"], **SENTIMENT, "label_thresholds": [1, 0], "label_names": list("abc")},
     "strictly increasing"),
    ("csv", {"paths": ["a"], **SENTIMENT, "label_names": ["a", "a"]}, "distinct"),
])
def test_nonsense_settings_are_rejected(registry, name, settings, words):
    with pytest.raises(ValidationError, match=words):
        registry.get("data_source", name).settings.model_validate(settings)


# every source

def test_the_fingerprint_follows_data_and_settings(tmp_path, source):
    path = write(tmp_path / "a.txt", "one\n")
    first = source("text", path).fingerprint()
    assert source("text", path).fingerprint() == first
    assert source("text", path, unit="line").fingerprint() != first
    assert source("jsonl", path).fingerprint() != first
    write(path, "two\n")
    assert source("text", path).fingerprint() != first


def test_records_stream_in_bounded_memory(tmp_path, source):
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "w" * 1000}) + "\n"
    with open(path, "w") as stream:
        for _ in range(20_000):
            stream.write(line)
    src = source("jsonl", path)
    records = src.records()
    assert isinstance(records, types.GeneratorType)
    tracemalloc.start()
    try:
        assert next(records)["source"] == f"{path}:1"
        first_peak = tracemalloc.get_traced_memory()[1]
        count = 1 + sum(1 for _ in records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000 and path.stat().st_size > 20_000_000
    assert first_peak < 1 << 20 and peak < 2 << 20, (first_peak, peak)


def test_movie_reviews_split_by_valence(source):
    src = source("tsv", EXAMPLE_DATA / "vader_movie_snippets.tsv.gz", text_column="text",
                 label_column="mean_human_valence", label_thresholds=[0],
                 label_names=["negative", "positive"])
    labels = Counter(record["label"] for record in src.records())
    assert sum(labels.values()) == 10_605 - 37
    assert set(labels) == {"negative", "positive"}
    assert src.skipped == Counter(on_threshold=37)
