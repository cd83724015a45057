"""Tests of the built-in python-docs data source (the embedded default corpus)."""

import os
import re
import subprocess
import sys
from itertools import islice

import pytest

from lmforge.errors import DataError
from lmforge.plugins.data import python_docs
from lmforge.plugins.data.python_docs import PythonDocsSource


def source(**settings) -> PythonDocsSource:
    return PythonDocsSource(PythonDocsSource.Settings(**settings))


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    """The whole corpus, read once for the module (about a second)."""
    return list(source().records())


@pytest.fixture
def tiny_stdlib(tmp_path, monkeypatch):
    """A stand-in standard library: one good module, one broken one, one skipped folder."""
    (tmp_path / "good.py").write_text('"""Module doc."""\n\n\ndef f():\n    """Function doc."""\n')
    (tmp_path / "broken.py").write_text('"""Doc."""\ndef f(:\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "skipped.py").write_text('"""Never read."""\n')
    monkeypatch.setattr(python_docs, "stdlib_root", lambda: tmp_path)
    return tmp_path


def test_registered_as_a_builtin_data_source(registry):
    entry = registry.get("data_source", "python-docs")
    assert entry.component is PythonDocsSource
    assert entry.provider.builtin
    assert "standard library" in entry.doc


def test_records_have_text_and_file_line_sources(corpus):
    assert all(record["text"] and set(record) == {"text", "source"} for record in corpus)
    module_sources = [r["source"] for r in corpus if not r["source"].startswith("pydoc_data/")]
    assert all(re.fullmatch(r"[\w./-]+\.py:\d+", s) for s in module_sources)
    assert any(s.startswith("json/") for s in module_sources)
    assert not any(re.search(r"(^|/)(tests?|idlelib|tkinter|site-packages)/", s)
                   for s in module_sources)


def test_the_corpus_is_a_couple_of_megabytes(corpus):
    total_chars = sum(len(record["text"]) for record in corpus)
    assert 1_000_000 < total_chars < 10_000_000
    assert len(corpus) > 2000


def test_help_topics_come_last_in_name_order(corpus):
    topics = [r["source"] for r in corpus if r["source"].startswith("pydoc_data/topics.py:")]
    assert "pydoc_data/topics.py:assert" in topics
    assert topics == sorted(topics)
    assert corpus[-len(topics):] == [r for r in corpus if r["source"] in set(topics)]


def test_the_order_is_deterministic(corpus):
    assert list(islice(source().records(), 50)) == corpus[:50]


def test_settings_select_what_is_read(corpus):
    topics_only = list(source(include_modules=False).records())
    assert topics_only and all(r["source"].startswith("pydoc_data/") for r in topics_only)
    long_topics = list(source(include_modules=False, min_chars=5000).records())
    assert 0 < len(long_topics) < len(topics_only)
    assert all(len(r["text"]) >= 5000 for r in long_topics)


def test_fingerprint_is_stable_across_processes_and_follows_the_settings():
    # another interpreter, another string-hash seed: the cache key must not depend on it
    code = ("from lmforge.plugins.data.python_docs import PythonDocsSource as S; "
            "print(S(S.Settings()).fingerprint())")
    elsewhere = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True, env={**os.environ, "PYTHONHASHSEED": "random"})
    assert elsewhere.stdout.strip() == source().fingerprint()
    assert source().fingerprint() != source(include_topics=False).fingerprint()


def test_fingerprint_follows_the_files(tiny_stdlib):
    before = source().fingerprint()
    (tiny_stdlib / "good.py").write_text('"""Changed doc, another size."""\n')
    assert source().fingerprint() != before


def test_skip_mode_counts_an_unparsable_file(tiny_stdlib):
    docs = source(errors="skip", include_topics=False)
    assert list(docs.records()) == [
        {"text": "Module doc.", "source": "good.py:1"},
        {"text": "Function doc.", "source": "good.py:5"},
    ]
    assert docs.skipped == {"unparsable": 1}


def test_strict_mode_names_the_unparsable_file(tiny_stdlib):
    with pytest.raises(DataError, match=r"broken\.py:2: expected Python source that parses"):
        list(source(include_topics=False).records())


def test_too_long_texts_are_bad_records(tiny_stdlib):
    docs = source(errors="skip", include_topics=False, max_line_bytes=12)
    assert [r["text"] for r in docs.records()] == ["Module doc."]
    assert docs.skipped == {"unparsable": 1, "too_long": 1}


def test_an_undecodable_file_is_a_bad_record(tiny_stdlib):
    (tiny_stdlib / "broken.py").unlink()
    (tiny_stdlib / "latin1.py").write_bytes('"""Café."""\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.py:1: .*can't decode byte 0xe9"):
        list(source(include_topics=False).records())
