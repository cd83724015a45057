"""Crash-safe writes: files and folders are built aside and swapped in whole, never half-written."""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths in one step
AT_FDCWD = -100

# Fault injection for the crash-safety tests (tests/core/test_crash_safety.py): with
# LMFORGE_FAULT_KILL=N the process SIGKILLs itself at the Nth fault point on a path containing
# LMFORGE_FAULT_PATH; LMFORGE_FAULT_TRACE=FILE lists the points a run passes, one per line.
_KILL_AT = int(os.environ.get("LMFORGE_FAULT_KILL", "0"))
_TRACE = os.environ.get("LMFORGE_FAULT_TRACE")
_FAULT_PATH = os.environ.get("LMFORGE_FAULT_PATH", "")
_fault_steps = itertools.count(1)


def fault_point(target: Path, what: str) -> None:
    """A step of a crash-safe write of `target` (`what` names it) where a test may kill us."""
    if not (_KILL_AT or _TRACE) or _FAULT_PATH not in str(target):
        return
    step = next(_fault_steps)
    if _TRACE:
        with open(_TRACE, "a", encoding="utf-8") as trace:
            trace.write(f"{step}\t{Path(target).name}\t{what}\n")
    if step == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block has written it, it replaces `path`,
    so a reader sees the old or the new file, never a mix. On error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        fault_point(path, "temporary file written")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        fault_point(path, "file replaced")
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old or the new content, never a mix."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _manifest(folder: Path, marker: str) -> list[str]:
    """Every file under `folder` but the marker and hidden temporaries, by relative path.
    Names, not sizes: a file replaced whole (a checkpoint's meta.json updated through
    `atomic_write_text`) keeps its folder complete."""
    return sorted(item.relative_to(folder).as_posix() for item in folder.rglob("*")
                  if item.is_file() and item.name != marker and not item.name.startswith("."))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(tmp: Path, final: Path) -> None:
    """Put the complete folder `tmp` at `final`; the old `final` stays whole until then."""
    if not final.exists():
        os.replace(tmp, final)
    elif _exchange(tmp, final):
        fault_point(final, "swapped with the old folder")
        shutil.rmtree(tmp)  # the old folder, now under the temporary name nobody reads
    else:
        # No atomic swap here: the old folder moves to a hidden name nobody reads, the new one
        # takes its place; if that fails, the old one comes back.
        aside = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, aside)
        fault_point(final, "old folder moved aside")
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(aside, final)
            raise
        shutil.rmtree(aside)
    fsync_dir(final.parent)


def stale_temporaries(parent: Path, name: str | None = None) -> list[Path]:
    """The temporary files and folders in `parent` (those for `name` only, if given) that
    `atomic_file` or `atomic_dir` left behind in a process that is no longer alive."""
    pattern = re.compile(rf"\.{re.escape(name) if name else '.+'}\.(?:tmp|old)-(\d+)")
    found = [(item, pattern.fullmatch(item.name)) for item in Path(parent).glob(".*")]
    return sorted(item for item, match in found if match and not alive(int(match.group(1))))


def _remove_stale(final: Path) -> None:
    for leftover in stale_temporaries(final.parent, final.name):
        shutil.rmtree(leftover, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process `pid` exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextmanager
def atomic_dir(final: Path, marker: str = "COMPLETE") -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `final` in one step, carrying `marker`.

    The marker holds the manifest (each file's relative path), written last inside the
    temporary folder; readers trust a folder only through `is_complete`. On error the temporary
    folder is removed and whatever was at `final` before is left untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fault_point(final, "temporary folder written")
        for item in sorted(tmp.rglob("*")):
            if item.is_file():
                with open(item, "rb+") as handle:
                    os.fsync(handle.fileno())
                fault_point(final, f"{item.name} synced")
        manifest = json.dumps({"files": _manifest(tmp, marker)}, indent=1, sort_keys=True)
        with atomic_file(tmp / marker) as marker_tmp:
            marker_tmp.write_text(manifest, encoding="utf-8")
        fsync_dir(tmp)
        _swap_in(tmp, final)
        fault_point(final, "folder in place")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_dir(folder: Path, marker: str = "COMPLETE") -> None:
    """Delete a folder, its marker first: a deletion cut short leaves an incomplete folder."""
    (folder / marker).unlink(missing_ok=True)
    fault_point(folder, "marker removed")
    shutil.rmtree(folder)


def is_complete(folder: Path, marker: str = "COMPLETE") -> bool:
    """Whether `folder` was fully written: its marker is there and lists exactly its files.

    An empty marker (folders written before markers carried a manifest) is trusted as it is.
    """
    try:
        text = (folder / marker).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return False
    if not text.strip():
        return True
    try:
        expected = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        return False
    return expected == _manifest(folder, marker)
