"""The built-in `python-docs` data source: the running interpreter's own documentation."""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

from pydantic import Field

from lmforge import hookimpl
from lmforge.errors import DataError
from lmforge.interfaces.data import DataSource, Record, SourceSettings

# Folders that hold tests, demos, GUI code or vendored packages rather than library docs.
SKIPPED_FOLDERS = ("site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo",
                   "tkinter", "lib2to3", "ensurepip", "__pycache__", "config-*")
TOPICS_SOURCE = "pydoc_data/topics.py"
DOCUMENTED_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)


def stdlib_root() -> Path:
    """The folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> Iterator[Path]:
    """The standard library's .py files in a stable order, without the skipped folders."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders
                               if not any(fnmatch(d, pattern) for pattern in SKIPPED_FOLDERS))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(folder) / name


def docstrings(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, docstring) of the module, its classes and functions, in source order."""
    found = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, DOCUMENTED_NODES):
            text = ast.get_docstring(node, clean=True)
            if text is not None:
                found.append((node.body[0].lineno, text))
        # Docstrings live only in statements: skipping expressions skips most of the tree.
        pending.extend(child for child in ast.iter_child_nodes(node)
                       if isinstance(child, STATEMENTS))
    return sorted(found, key=lambda item: item[0])


def pydoc_topics_module():
    """The `pydoc_data.topics` module: plain data, safe to import."""
    try:
        import pydoc_data.topics
    except ImportError as exc:
        raise DataError(f"python-docs: this interpreter ({sys.executable}) has no "
                        f"pydoc_data.topics module ({exc}); set include_topics: false") from exc
    return pydoc_data.topics


def file_stamp(path: Path, relative_to: Path) -> str:
    stat = path.stat()
    return f"{path.relative_to(relative_to).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n"


class PythonDocsSource(DataSource):
    """The docstrings of the running Python's standard library and its `help()` topics.

    About 2 MB of English prose about programming, read from the interpreter itself: no download
    and no data files. Each module, class and function docstring is one record with source
    `path/to/module.py:LINE`; each pydoc help topic is one record with source
    `pydoc_data/topics.py:TOPIC`. Test suites, demos, GUI code and site-packages are left out.
    """

    class Settings(SourceSettings):
        include_modules: bool = Field(
            True, description="the docstrings of the standard library's modules, classes and "
                              "functions")
        include_topics: bool = Field(
            True, description="the help topics of `help('TOPIC')` (keywords, syntax, types)")
        min_chars: int = Field(
            1, ge=1, description="leave out texts shorter than this many characters")

    def records(self) -> Iterator[Record]:
        if self.settings.include_modules:
            yield from self._module_records(stdlib_root())
        if self.settings.include_topics:
            yield from self._topic_records()

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        root = stdlib_root()
        digest.update(f"{sys.version}\0{root}\0{self.settings.model_dump_json()}\n".encode())
        if self.settings.include_modules:
            for path in stdlib_files(root):
                digest.update(file_stamp(path, root).encode())
        if self.settings.include_topics:
            topics_file = Path(pydoc_topics_module().__file__)
            digest.update(file_stamp(topics_file, topics_file.parents[1]).encode())
        return digest.hexdigest()

    def _module_records(self, root: Path) -> Iterator[Record]:
        for path in stdlib_files(root):
            relative = path.relative_to(root).as_posix()
            tree = self._parse(path, relative)
            if tree is None:
                continue
            for line, text in docstrings(tree):
                yield from self._record(text, f"{relative}:{line}")

    def _topic_records(self) -> Iterator[Record]:
        topics = pydoc_topics_module().topics
        for name in sorted(topics):
            yield from self._record(topics[name], f"{TOPICS_SOURCE}:{name}")

    def _parse(self, path: Path, relative: str) -> ast.Module | None:
        """The syntax tree of one file, or None (counted) when it cannot be read or parsed."""
        try:
            source = path.read_bytes()
        except OSError as exc:
            self.bad(relative, "unreadable", f"expected a readable Python file, got {exc}")
            return None
        try:
            # Parsing, not running: warnings about the code (e.g. invalid escapes) are not ours.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ast.parse(source, filename=relative)
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None)
            where = f"{relative}:{line}" if line else relative
            self.bad(where, "unparsable", f"expected Python source that parses, got "
                                          f"{type(exc).__name__}: {exc}")
            return None

    def _record(self, text: str, source: str) -> Iterator[Record]:
        if len(text) < self.settings.min_chars:
            return
        if len(text.encode()) > self.settings.max_line_bytes:
            self.bad(source, "too_long", f"expected at most {self.settings.max_line_bytes} "
                                         f"bytes of text, found {len(text.encode())}")
            return
        yield {"text": text, "source": source}


@hookimpl
def register_data_sources(register):
    register("python-docs", PythonDocsSource)
