"""The built-in data sources: plain text, JSON Lines, CSV and TSV files."""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import math
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmforge import hookimpl
from lmforge.interfaces.data import DataSource, Record, SourceSettings
from lmforge.plugins.data.textio import Line, LineProblem, expand_paths, hash_files, read_lines


@hookimpl
def register_data_sources(register):
    register("text", TextSource)
    register("jsonl", JsonlSource)
    register("csv", CsvSource)
    register("tsv", TsvSource)


class FileSourceSettings(SourceSettings):
    """Settings every file-based source shares."""

    paths: list[str] = Field(
        min_length=1, json_schema_extra={"config_path": True},
        description="files, folders (every non-hidden file below, recursively) or glob patterns "
                    "(*, ?, ** recursive); a relative name is read from beside the config file "
                    "where it exists there, else from the current directory; names ending in "
                    ".gz are decompressed")

    @field_validator("paths")
    @classmethod
    def _no_empty_path(cls, paths: list[str]) -> list[str]:
        if not all(path.strip() for path in paths):
            raise ValueError(f"expected file, folder or glob names, found an empty one in {paths}")
        return paths


class FileSource(DataSource):
    """Base of the sources that read files line by line; reads the files in sorted order."""

    Settings = FileSourceSettings

    def records(self) -> Iterator[Record]:
        """Yield the records of every file; `skipped` counts the bad records of this pass."""
        self.skipped.clear()
        for path in expand_paths(self.settings.paths):
            yield from self.file_records(path)

    @abstractmethod
    def file_records(self, path: Path) -> Iterator[Record]:
        """Yield the records of one file."""

    def fingerprint(self) -> str:
        settings = json.dumps(self.settings.model_dump(), sort_keys=True)
        files = hash_files(expand_paths(self.settings.paths))
        return hashlib.sha256(f"{type(self).__name__}\0{settings}\0{files}".encode()).hexdigest()

    def lines(self, path: Path) -> Iterator[Line]:
        return read_lines(path, self.settings.max_line_bytes)

    def bad_line(self, path: Path, line: Line) -> None:
        self.bad(f"{path}:{line.number}", line.problem.reason, line.problem.message)

    def empty_file(self, path: Path, expected: str) -> None:
        self.bad(str(path), "empty_file",
                 f"expected {expected}, found an empty file (no bytes, or only whitespace)")


def _is_blank(line: Line) -> bool:
    return line.problem is None and not line.text.strip()


class TextSource(FileSource):
    """Plain UTF-8 text files (gzip-compressed when the name ends in .gz).

    One document per file, per line or per paragraph (lines separated by blank lines); blank
    lines are never documents. A bad line (invalid UTF-8, too long) spoils its whole document.
    """

    suffixes = (".txt",)

    class Settings(FileSourceSettings):
        unit: Literal["file", "line", "paragraph"] = Field(
            "paragraph", description="what one document is: a whole file, one line, or a "
                                     "paragraph (lines up to the next blank line)")

    def file_records(self, path: Path) -> Iterator[Record]:
        found = False
        for document in _documents(self.lines(path), self.settings.unit):
            found = True
            problem_line = next((line for line in document if line.problem), None)
            if problem_line is not None:
                self.bad_line(path, problem_line)
                continue
            yield {"text": "\n".join(line.text for line in document),
                   "source": f"{path}:{document[0].number}"}
        if not found:
            self.empty_file(path, "text")


def _documents(lines: Iterator[Line], unit: str) -> Iterator[list[Line]]:
    """Group lines into documents; a line with a problem counts as text, so it joins one."""
    if unit == "line":
        yield from ([line] for line in lines if not _is_blank(line))
    elif unit == "paragraph":
        paragraph: list[Line] = []
        for line in lines:
            if not _is_blank(line):
                paragraph.append(line)
            elif paragraph:
                yield paragraph
                paragraph = []
        if paragraph:
            yield paragraph
    else:
        document = list(lines)
        if not all(_is_blank(line) for line in document):
            yield document


class JsonlSource(FileSource):
    """JSON Lines files: one JSON object per line, the text in `text_field`.

    Blank lines are skipped. A last line without a line ending that does not parse is reported
    as a truncated file.
    """

    suffixes = (".jsonl",)

    class Settings(FileSourceSettings):
        text_field: str = Field("text", min_length=1,
                                description="the field holding each record's text")
        label_field: str | None = Field(
            None, min_length=1, description="the field holding the label (any JSON value but "
                                            "null); none: records have no label")

        @model_validator(mode="after")
        def _distinct_fields(self):
            if self.label_field == self.text_field:
                raise ValueError(f"expected label_field to differ from text_field, found both "
                                 f"{self.text_field!r}")
            return self

    def file_records(self, path: Path) -> Iterator[Record]:
        found = False
        for line in self.lines(path):
            if _is_blank(line):
                continue
            found = True
            record = self._record(path, line)
            if record is not None:
                yield record
        if not found:
            self.empty_file(path, "one JSON object per line")

    def _record(self, path: Path, line: Line) -> Record | None:
        where = f"{path}:{line.number}"
        if line.problem is not None:
            return self.bad_line(path, line)
        try:
            row = json.loads(line.text)
        except (ValueError, RecursionError) as exc:
            return self._unparsable(where, line, exc)
        if not isinstance(row, dict):
            return self.bad(where, "not_an_object",
                            f"expected a JSON object, found a JSON {_json_type(row)}")
        text_field, label_field = self.settings.text_field, self.settings.label_field
        if text_field not in row:
            return self._missing_field(where, text_field, row)
        text = row[text_field]
        if not isinstance(text, str):
            return self.bad(where, "not_a_string", f"expected field {text_field!r} to be a "
                                                   f"string, found a JSON {_json_type(text)}")
        record: Record = {"text": text, "source": where}
        if label_field is not None:
            if label_field not in row:
                return self._missing_field(where, label_field, row)
            if row[label_field] is None:
                return self.bad(where, "bad_label", f"expected a label in field "
                                                    f"{label_field!r}, found null")
            record["label"] = row[label_field]
        return record

    def _unparsable(self, where: str, line: Line, exc: Exception) -> None:
        if isinstance(exc, json.JSONDecodeError):
            detail = f"{exc.msg} at column {exc.colno}"
        else:
            detail = str(exc) or "nested too deeply"
        if not line.newline:
            return self.bad(where, "truncated_line", (
                f"expected a JSON object, found invalid JSON ({detail}) on the last line, which "
                f"has no line ending: the file looks truncated"))
        return self.bad(where, "invalid_json", f"expected a JSON object, found invalid JSON: "
                                               f"{detail}")

    def _missing_field(self, where: str, field: str, row: dict) -> None:
        self.bad(where, "missing_field",
                 f"expected a field {field!r}, found fields: {_listing(list(row))}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    kinds = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return "null" if value is None else kinds[type(value)]


def _listing(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class CsvSource(FileSource):
    """CSV files with a header row: the text in `text_column`, an optional label column.

    A numeric label column can be cut into named labels by thresholds: with thresholds [0] and
    names [negative, positive], values below 0 are negative, above 0 positive, and rows exactly
    at 0 are dropped and counted under `on_threshold` (not an error, even in strict mode).
    Quoted fields may span lines.
    """

    suffixes = (".csv",)

    class Settings(FileSourceSettings):
        delimiter: str = Field(",", min_length=1, max_length=1,
                               description="the character between fields")
        quotechar: str | None = Field(
            '"', min_length=1, max_length=1,
            description="the character around fields holding delimiters or line breaks; "
                        "null: no quoting, every quote is literal")
        text_column: str = Field("text", min_length=1,
                                 description="the column holding each record's text")
        label_column: str | None = Field(
            None, min_length=1, description="the column holding the label; none: no labels")
        label_thresholds: list[float] | None = Field(
            None, min_length=1, description="increasing cut points turning a numeric label "
                                            "column into label_names; values exactly at a cut "
                                            "point are dropped")
        label_names: list[str] | None = Field(
            None, min_length=2, description="the label of each interval between thresholds, "
                                            "lowest first (one more than thresholds)")

        @model_validator(mode="after")
        def _consistent(self):
            if self.delimiter in "\r\n" or self.delimiter == self.quotechar:
                raise ValueError(f"expected a delimiter other than a line break or the quote "
                                 f"character, found {self.delimiter!r}")
            if self.label_column == self.text_column:
                raise ValueError(f"expected label_column to differ from text_column, found "
                                 f"both {self.text_column!r}")
            self._check_thresholds()
            return self

        def _check_thresholds(self) -> None:
            thresholds, names = self.label_thresholds, self.label_names
            if (thresholds is None) != (names is None):
                raise ValueError("expected label_thresholds and label_names together, found "
                                 "only one of them")
            if thresholds is None:
                return
            if self.label_column is None:
                raise ValueError("expected a label_column for label_thresholds to apply to, "
                                 "found none")
            if len(names) != len(thresholds) + 1:
                raise ValueError(f"expected one more label name than thresholds, found "
                                 f"{len(names)} names for {len(thresholds)} thresholds")
            if not all(map(math.isfinite, thresholds)) or thresholds != sorted(set(thresholds)):
                raise ValueError(f"expected finite, strictly increasing label_thresholds, "
                                 f"found {thresholds}")
            if len(set(names)) != len(names) or not all(name.strip() for name in names):
                raise ValueError(f"expected distinct, non-empty label_names, found {names}")

    def file_records(self, path: Path) -> Iterator[Record]:
        rows = _csv_rows(self.lines(path), self._dialect())
        header = next(rows, None)
        if header is None:
            self.empty_file(path, "a header row naming the columns")
            return
        columns = self._columns(path, header)
        for row in rows if columns is not None else ():
            record = self._record(path, row, columns)
            if record is not None:
                yield record

    def _dialect(self) -> dict[str, Any]:
        # csv refuses fields above a process-wide limit (128 KiB by default); lines up to
        # max_line_bytes are accepted everywhere else, so fields must be too
        csv.field_size_limit(max(csv.field_size_limit(), self.settings.max_line_bytes))
        if self.settings.quotechar is None:
            return {"delimiter": self.settings.delimiter, "quoting": csv.QUOTE_NONE}
        return {"delimiter": self.settings.delimiter, "quotechar": self.settings.quotechar}

    def _columns(self, path: Path, header: _Row) -> _Columns | None:
        if header.problem is not None:
            return self.bad(f"{path}:{header.problem_line}", *header.problem)
        wanted = [self.settings.text_column, self.settings.label_column]
        for name in wanted:
            if name is not None and name not in header.fields:
                return self.bad(f"{path}:{header.line}", "missing_column",
                                f"expected a column named {name!r}, found columns: "
                                f"{_listing(header.fields)}")
        label = None if wanted[1] is None else header.fields.index(wanted[1])
        return _Columns(header.fields.index(wanted[0]), label, len(header.fields))

    def _record(self, path: Path, row: _Row, columns: _Columns) -> Record | None:
        where = f"{path}:{row.line}"
        if row.problem is not None:
            return self.bad(f"{path}:{row.problem_line}", *row.problem)
        if len(row.fields) != columns.width:
            return self.bad(where, "ragged_row", f"expected {columns.width} fields as in the "
                                                 f"header, found {len(row.fields)} (fields are "
                                                 f"separated by {self.settings.delimiter!r})")
        record: Record = {"text": row.fields[columns.text], "source": where}
        if columns.label is not None:
            label = self._label(where, row.fields[columns.label].strip())
            if label is None:
                return None
            record["label"] = label
        return record

    def _label(self, where: str, value: str) -> str | None:
        column, thresholds = self.settings.label_column, self.settings.label_thresholds
        if thresholds is None:
            if not value:
                return self.bad(where, "bad_label",
                                f"expected a label in column {column!r}, found an empty value")
            return value
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isnan(number):
            return self.bad(where, "bad_label", f"expected a number in column {column!r}, "
                                                f"found {value!r} (label_thresholds need numbers)")
        if number in thresholds:
            self.skipped["on_threshold"] += 1
            return None
        return self.settings.label_names[bisect.bisect_left(thresholds, number)]


class TsvSource(CsvSource):
    """Tab-separated files with a header row; the same settings as `csv`, tab-delimited."""

    suffixes = (".tsv",)

    class Settings(CsvSource.Settings):
        delimiter: str = Field("\t", min_length=1, max_length=1,
                               description="the character between fields")


@dataclass(frozen=True)
class _Columns:
    """Where the wanted columns are in a file's header."""

    text: int
    label: int | None
    width: int


@dataclass(frozen=True)
class _Row:
    """One CSV row, the line it starts on, and the first problem in its lines, if any."""

    line: int
    fields: list[str]
    problem: tuple[str, str] | None = None
    problem_line: int = 0


class _CsvFeed:
    """Feeds decoded lines to csv.reader, noting the last line number and a row's first problem."""

    def __init__(self, lines: Iterator[Line]):
        self._lines = lines
        self.line_number = 0
        self.problem: tuple[int, LineProblem] | None = None

    def __iter__(self) -> _CsvFeed:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.line_number = line.number
        if line.problem is None:
            # csv keeps a line break inside a quoted field only when the line carries it
            return line.text + "\n"
        if self.problem is None:
            self.problem = (line.number, line.problem)
        return "\n"


def _csv_rows(lines: Iterator[Line], dialect: dict[str, Any]) -> Iterator[_Row]:
    """The non-blank rows of a CSV stream, each with its first line number and first problem."""
    feed = _CsvFeed(lines)
    reader = csv.reader(feed, **dialect)
    while True:
        start, feed.problem = feed.line_number + 1, None
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _Row(start, [], ("bad_csv", f"expected well-formed CSV, found: {exc}"), start)
            continue
        if feed.problem is not None:
            number, problem = feed.problem
            yield _Row(start, fields, (problem.reason, problem.message), number)
        elif any(field.strip() for field in fields):
            yield _Row(start, fields)
