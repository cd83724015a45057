"""Crash-safe files and folders: a failure at any step leaves the old or the new, never a mix."""

import os
import shutil
import subprocess
import sys

import pytest

import lmforge.atomic
from lmforge.atomic import atomic_dir, atomic_write_text, is_complete, stale_temporaries


def write_folder(final, files):
    with atomic_dir(final) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "COMPLETE"}


def test_a_written_folder_is_complete_and_lists_its_files(tmp_path):
    write_folder(tmp_path / "f", {"a.txt": "1", "sub/b.txt": "2"})
    assert is_complete(tmp_path / "f")
    assert contents(tmp_path / "f") == {"a.txt": "1", "sub/b.txt": "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("change", ["delete", "add"])
def test_a_folder_whose_files_differ_from_its_manifest_is_not_trusted(tmp_path, change):
    write_folder(tmp_path / "f", {"a.txt": "1", "b.txt": "2"})
    if change == "delete":
        (tmp_path / "f" / "b.txt").unlink()
    else:
        (tmp_path / "f" / "c.txt").write_text("3")
    assert not is_complete(tmp_path / "f")


def test_hidden_temporaries_and_files_replaced_whole_keep_a_folder_complete(tmp_path):
    write_folder(tmp_path / "f", {"meta.json": "{}"})
    atomic_write_text(tmp_path / "f" / "meta.json", '{"final": true}')
    (tmp_path / "f" / ".meta.json.tmp-12345").write_text("{")  # a writer killed mid-update
    assert is_complete(tmp_path / "f")


def test_an_empty_marker_from_before_manifests_is_trusted(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.txt").write_text("1")
    (tmp_path / "f" / "COMPLETE").write_text("")
    assert is_complete(tmp_path / "f")
    assert not is_complete(tmp_path / "missing")


def test_an_error_in_the_block_leaves_the_old_folder_and_no_temporary(tmp_path):
    write_folder(tmp_path / "f", {"a.txt": "old"})
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "f") as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("killed")
    assert contents(tmp_path / "f") == {"a.txt": "old"} and is_complete(tmp_path / "f")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def killed(*args, **kwargs):
    raise OSError("killed")


def test_a_failure_deleting_the_old_folder_after_the_swap_leaves_the_new_one(tmp_path,
                                                                            monkeypatch):
    write_folder(tmp_path / "f", {"a.txt": "old", "b.txt": "old"})
    real_rmtree = shutil.rmtree

    def rmtree(path, ignore_errors=False):
        if not ignore_errors:  # the delete of the old folder, after the swap
            raise OSError("killed")
        real_rmtree(path, ignore_errors=True)

    monkeypatch.setattr(lmforge.atomic.shutil, "rmtree", rmtree)
    with pytest.raises(OSError, match="killed"):
        write_folder(tmp_path / "f", {"a.txt": "new"})
    assert contents(tmp_path / "f") == {"a.txt": "new"} and is_complete(tmp_path / "f")


def test_without_an_atomic_swap_a_failed_move_puts_the_old_folder_back(tmp_path, monkeypatch):
    monkeypatch.setattr(lmforge.atomic, "_exchange", lambda a, b: False)
    write_folder(tmp_path / "f", {"a.txt": "old", "b.txt": "old"})
    real_replace = os.replace

    def replace_then_fail(src, dst):
        if dst == tmp_path / "f" and ".tmp-" in str(src):  # the new folder going in
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(lmforge.atomic.os, "replace", replace_then_fail)
    with pytest.raises(OSError, match="killed"):
        write_folder(tmp_path / "f", {"a.txt": "new"})
    assert contents(tmp_path / "f") == {"a.txt": "old", "b.txt": "old"}
    assert is_complete(tmp_path / "f") and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_without_an_atomic_swap_the_new_folder_replaces_the_old(tmp_path, monkeypatch):
    monkeypatch.setattr(lmforge.atomic, "_exchange", lambda a, b: False)
    write_folder(tmp_path / "f", {"a.txt": "old", "b.txt": "old"})
    write_folder(tmp_path / "f", {"a.txt": "new"})
    assert contents(tmp_path / "f") == {"a.txt": "new"} and is_complete(tmp_path / "f")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_the_swap_is_atomic_on_this_system(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    assert lmforge.atomic._exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "x").read_text() == "a" and not any((tmp_path / "a").iterdir())


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f".f.tmp-{dead}").mkdir()
    (tmp_path / f".f.tmp-{os.getppid()}").mkdir()  # a live process: maybe still writing
    write_folder(tmp_path / "f", {"a.txt": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".f.tmp-{os.getppid()}", "f"]


def test_stale_temporaries_lists_those_of_dead_writers_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name in (f".f.tmp-{dead}", f".g.old-{dead}", f".f.tmp-{os.getpid()}", f".f.bak-{dead}"):
        (tmp_path / name).mkdir()
    (tmp_path / f".h.json.tmp-{dead}").write_text("{")  # an atomic_file temporary
    (tmp_path / ".notes").write_text("not lmforge's")
    assert [p.name for p in stale_temporaries(tmp_path)] == [
        f".f.tmp-{dead}", f".g.old-{dead}", f".h.json.tmp-{dead}"]
    assert [p.name for p in stale_temporaries(tmp_path, "f")] == [f".f.tmp-{dead}"]


def test_a_failed_file_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "a.txt", "old")
    monkeypatch.setattr(lmforge.atomic.os, "replace", killed)
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "a.txt", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"

