"""Tests of the example third-party plugin lmforge-sqlite, and its discovery as a distribution."""

import importlib.util
import sqlite3
from contextlib import closing
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from lmforge.errors import DataError
from lmforge.host.manager import load_plugins

PLUGIN_FILE = Path(__file__).parents[2] / "examples/lmforge-sqlite/lmforge_sqlite/__init__.py"


def load_plugin_source():
    """The plugin module from the source tree: the installed copy may predate an edit."""
    spec = importlib.util.spec_from_file_location("lmforge_sqlite_under_test", PLUGIN_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lmforge_sqlite = load_plugin_source()
SqliteSource = lmforge_sqlite.SqliteSource

REVIEWS = [("a fine film", "pos"), ("a dull film", "neg"), ("an odd film", "pos")]


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "reviews.db"
    write(path, "CREATE TABLE reviews (id INTEGER PRIMARY KEY, body TEXT, mood TEXT)")
    write(path, "INSERT INTO reviews (body, mood) VALUES (?, ?)", REVIEWS)
    return path


def source(database, query="SELECT body AS text FROM reviews ORDER BY id", **settings):
    return SqliteSource(SqliteSource.Settings(path=str(database), query=query, **settings))


def write(database, statement, rows=((),)):
    """Run one statement per row and commit, closing the connection."""
    with closing(sqlite3.connect(database)) as db, db:
        db.executemany(statement, rows)


def add_row(database, body):
    write(database, "INSERT INTO reviews (body, mood) VALUES (?, 'pos')", [(body,)])


def test_streams_texts_with_row_sources(database):
    assert list(source(database).records()) == [
        {"text": text, "source": f"reviews.db:row {n}"} for n, (text, _) in enumerate(REVIEWS, 1)
    ]


def test_streams_labels_from_a_named_column(database):
    records = source(database, "SELECT body, mood FROM reviews ORDER BY id",
                     text_column="body", label_column="mood").records()
    assert [(r["text"], r["label"]) for r in records] == REVIEWS


def test_streams_more_rows_than_one_fetch(database):
    write(database, "INSERT INTO reviews (body) VALUES (?)",
          [(f"row {i}",) for i in range(lmforge_sqlite.BATCH_ROWS * 2)])
    records = list(source(database).records())
    assert len(records) == len(REVIEWS) + 2 * lmforge_sqlite.BATCH_ROWS
    assert records[-1]["source"] == f"reviews.db:row {len(records)}"


def test_the_database_is_opened_read_only(database):
    with pytest.raises(DataError, match="readonly"):
        list(source(database, "INSERT INTO reviews (body) VALUES ('x') RETURNING body AS text")
             .records())


def test_a_missing_database_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"expected a database file at .*nowhere\.db, found "
                                        r"nothing"):
        list(source(tmp_path / "nowhere.db").records())


def test_a_sql_error_names_the_query_and_sqlites_message(database):
    with pytest.raises(DataError, match=r"query 'SELECT body FROM nope' .* no such table: nope"):
        list(source(database, "SELECT body FROM nope").records())


def test_a_missing_column_lists_the_columns_of_the_query(database):
    with pytest.raises(DataError, match=r"text_column 'text' .* its columns: body, mood"):
        list(source(database, "SELECT body, mood FROM reviews").records())
    with pytest.raises(DataError, match=r"label_column 'stars' .* its columns: text"):
        list(source(database, label_column="stars").records())


def test_null_and_non_text_values_are_bad_records(database):
    add_row(database, None)
    add_row(database, b"\x00bytes")
    lenient = source(database, errors="skip")
    assert len(list(lenient.records())) == len(REVIEWS)
    assert lenient.skipped == {"null_text": 1, "not_text": 1}
    with pytest.raises(DataError, match=r"reviews\.db:row 4: expected text in column 'text', "
                                        r"found NULL"):
        list(source(database).records())


def test_a_null_label_is_a_bad_record(database):
    write(database, "INSERT INTO reviews (body, mood) VALUES ('no mood', NULL)")
    query = "SELECT body AS text, mood FROM reviews ORDER BY id"
    lenient = source(database, query, label_column="mood", errors="skip")
    assert [r["label"] for r in lenient.records()] == [label for _, label in REVIEWS]
    assert lenient.skipped == {"null_label": 1}
    with pytest.raises(DataError, match=r"reviews\.db:row 4: expected a label in column 'mood'"):
        list(source(database, query, label_column="mood").records())


def test_fingerprint_follows_the_file_and_the_settings(database):
    before = source(database).fingerprint()
    assert source(database).fingerprint() == before
    assert source(database, "SELECT body AS text FROM reviews").fingerprint() != before
    add_row(database, "a new review")
    assert source(database).fingerprint() != before


def test_discovered_through_its_installed_distribution():
    try:
        distribution("lmforge-sqlite")
    except PackageNotFoundError:
        pytest.skip("the lmforge-sqlite distribution is not installed; "
                    "pip install ./examples/lmforge-sqlite")
    host = load_plugins({"LMFORGE_LOAD_PLUGINS": "sqlite"})
    entry = host.registry.get("data_source", "sqlite")
    assert (entry.provider.distribution, entry.provider.version) == ("lmforge-sqlite", "0.1.0")
    assert not entry.provider.builtin
    assert entry.component.__name__ == "SqliteSource"


def test_not_loaded_when_third_party_plugins_are_off():
    host = load_plugins({"LMFORGE_LOAD_PLUGINS": ""})
    assert "sqlite" not in host.registry.names("data_source")
