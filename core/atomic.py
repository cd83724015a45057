"""Crash-safe writes: temporary file or folder, fsync, rename; nothing saved is half-written."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_dir(final: Path, marker: str = "COMPLETE"):
    """Yield a temporary folder; on success rename it to `final` and write `marker` inside last.

    A folder without its marker is incomplete and must be ignored by readers. On error the
    temporary folder is removed and whatever was at `final` before is left untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                with open(item, "rb+") as handle:
                    os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        atomic_write_text(final / marker, "")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_complete(folder: Path, marker: str = "COMPLETE") -> bool:
    return (folder / marker).is_file()
