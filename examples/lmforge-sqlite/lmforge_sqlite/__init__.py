"""lmforge-sqlite: a data source reading text and labels from a SQLite query."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from pydantic import Field

from lmforge import DataError, DataSource, Record, SourceSettings, hookimpl

BATCH_ROWS = 1000


class SqliteSource(DataSource):
    """Streams the rows of a SQL query on a SQLite database, one record per row.

    The database is opened read-only. Each row gives the text of `text_column` and, when
    `label_column` is set, that column as the label; its source is `FILE.db:row N`, counting the
    query's rows from 1. A NULL or non-text value in the text column, or a NULL label, is a bad
    record.
    """

    class Settings(SourceSettings):
        path: str = Field(description="the SQLite database file (relative: beside the config "
                                      "file when it is there, else from the working directory)",
                          json_schema_extra={"config_path": True})
        query: str = Field(description="a SQL SELECT whose rows become records, "
                                       "e.g. SELECT body AS text FROM posts ORDER BY id")
        text_column: str = Field("text", description="the query column holding the text")
        label_column: str | None = Field(
            None, description="the query column holding the label; none: records have no label")

    def records(self) -> Iterator[Record]:
        path = self._database()
        with closing(self._connect(path)) as db:
            cursor = self._execute(db, path)
            text_at, label_at = self._column_positions(cursor, path)
            row_number = 0
            while rows := self._fetch(cursor, path):
                for row in rows:
                    row_number += 1
                    record = self._record(row, text_at, label_at, f"{path.name}:row {row_number}")
                    if record is not None:
                        yield record

    def fingerprint(self) -> str:
        path = self._database()
        digest = hashlib.sha256(self.settings.model_dump_json().encode())
        # In WAL mode recent writes live in the -wal file until a checkpoint.
        for part in (path, path.with_name(path.name + "-wal")):
            if part.is_file():
                with part.open("rb") as file:
                    while chunk := file.read(1 << 20):
                        digest.update(chunk)
        return digest.hexdigest()

    def _database(self) -> Path:
        path = Path(self.settings.path)
        if not path.is_file():
            raise DataError(f"sqlite: expected a database file at {path}, found "
                            f"{'a folder' if path.is_dir() else 'nothing'}")
        return path

    def _connect(self, path: Path) -> sqlite3.Connection:
        try:
            return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise DataError(f"sqlite: cannot open {path} read-only: {exc}") from exc

    def _execute(self, db: sqlite3.Connection, path: Path) -> sqlite3.Cursor:
        try:
            return db.execute(self.settings.query)
        except sqlite3.Error as exc:
            raise self._query_error(path, exc) from exc

    def _fetch(self, cursor: sqlite3.Cursor, path: Path) -> list[tuple]:
        try:
            return cursor.fetchmany(BATCH_ROWS)
        except sqlite3.Error as exc:
            raise self._query_error(path, exc) from exc

    def _query_error(self, path: Path, exc: sqlite3.Error) -> DataError:
        return DataError(f"sqlite: query {self.settings.query!r} on {path} failed: "
                         f"{type(exc).__name__}: {exc}")

    def _column_positions(self, cursor: sqlite3.Cursor, path: Path) -> tuple[int, int | None]:
        """Where the text and label columns are in each row of the query."""
        if cursor.description is None:
            raise DataError(f"sqlite: query {self.settings.query!r} on {path} returns no rows; "
                            f"expected a SELECT")
        columns = [column[0] for column in cursor.description]
        text_at = self._position(columns, "text_column", path)
        if self.settings.label_column is None:
            return text_at, None
        return text_at, self._position(columns, "label_column", path)

    def _position(self, columns: list[str], setting: str, path: Path) -> int:
        name = getattr(self.settings, setting)
        if name not in columns:
            raise DataError(f"sqlite: {setting} {name!r} is not a column of query "
                            f"{self.settings.query!r} on {path}; its columns: {', '.join(columns)}")
        return columns.index(name)

    def _record(self, row: tuple, text_at: int, label_at: int | None,
                source: str) -> Record | None:
        text = row[text_at]
        column = self.settings.text_column
        if text is None:
            return self.bad(source, "null_text", f"expected text in column {column!r}, "
                                                 f"found NULL")
        if not isinstance(text, str):
            return self.bad(source, "not_text", f"expected text in column {column!r}, found "
                                                f"{type(text).__name__} {text!r:.80}")
        if len(text.encode()) > self.settings.max_line_bytes:
            return self.bad(source, "too_long", f"expected at most "
                                                f"{self.settings.max_line_bytes} bytes of text, "
                                                f"found {len(text.encode())}")
        record: Record = {"text": text, "source": source}
        if label_at is not None:
            if row[label_at] is None:
                return self.bad(source, "null_label", f"expected a label in column "
                                                      f"{self.settings.label_column!r}, found NULL")
            record["label"] = row[label_at]
        return record


@hookimpl
def register_data_sources(register):
    register("sqlite", SqliteSource)
