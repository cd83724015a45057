"""A refused run changes nothing in the run folder: every file stays byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.run.folder import LOCK_FILE, check_run_folder, run_lock, running_pid
from lmforge.run.pipeline import load_run, run

from .test_pipeline import quiet, write_config


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    config = write_config(tmp_path, "gpt", max_steps=4, checkpoint_every=2, eval_every=4)
    run(str(config), registry, console=quiet())
    return config, tmp_path / "runs" / "tiny-gpt"


@pytest.mark.parametrize("resume, refusal", [
    (False, r"already has 2 complete checkpoint\(s\).*--resume"),
    (True, r"cannot resume from checkpoint .*config hash"),
])
def test_a_changed_config_is_refused_before_the_run_folder_changes(registry, trained, resume,
                                                                  refusal):
    config, run_dir = trained
    before = snapshot(run_dir)
    with pytest.raises(LmforgeError, match=refusal):
        run(str(config), registry, ("model.n_layer=2",), resume=resume, console=quiet())
    assert snapshot(run_dir) == before
    loaded = load_run(run_dir, registry, with_data=False)  # still usable: the weights fit
    assert loaded.checkpoint.name == "step-00000004"


def test_a_changed_data_split_is_refused_before_the_run_folder_changes(registry, trained):
    config, run_dir = trained
    before = snapshot(run_dir)
    with pytest.raises(LmforgeError, match="already has 2 complete checkpoint"):
        run(str(config), registry, ("data.split.val=0.2",), console=quiet())
    assert snapshot(run_dir) == before


def test_a_folder_that_is_not_a_run_folder_is_never_written(registry, tmp_path):
    config = write_config(tmp_path, "gpt", max_steps=4)
    elsewhere = tmp_path / "elsewhere" / "notes"
    elsewhere.mkdir(parents=True)
    (elsewhere / "mine.txt").write_text("not lmforge's")
    before = snapshot(elsewhere.parent)
    overrides = (f"runs_dir={elsewhere.parent}", "name=notes")
    with pytest.raises(LmforgeError, match=r"notes exists and is not a run folder"):
        run(str(config), registry, overrides, console=quiet())
    assert snapshot(elsewhere.parent) == before
    (elsewhere / "mine.txt").unlink()  # an empty folder may become a run folder
    run(str(config), registry, overrides, console=quiet())
    assert (elsewhere / "config.yaml").exists()


@pytest.fixture
def live_process():
    """A process that lives through the test: the holder of a lock."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child.pid
    child.kill()
    child.wait()


def test_a_run_folder_in_use_by_a_live_process_is_refused_untouched(registry, trained,
                                                                   live_process):
    config, run_dir = trained
    (run_dir / LOCK_FILE).write_text(f"{live_process}\n")
    before = snapshot(run_dir)
    with pytest.raises(LmforgeError, match=rf"in use by another lmforge process \(pid "
                                           rf"{live_process}\)"):
        run(str(config), registry, console=quiet())
    assert snapshot(run_dir) == before
    assert running_pid(run_dir) == live_process


def test_a_lock_left_by_a_dead_process_is_taken_over_and_released(registry, trained):
    config, run_dir = trained
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (run_dir / LOCK_FILE).write_text(f"{child.pid}\n")
    assert running_pid(run_dir) is None
    results = run(str(config), registry, console=quiet())  # finished: evaluates again
    assert results["eval"]["test"]["loss"] > 0
    assert not (run_dir / LOCK_FILE).exists()


def test_a_folder_holding_only_a_stale_lock_is_still_a_run_folder(tmp_path):
    folder = tmp_path / "runs" / "killed-early"
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).write_text("999999999\n")
    check_run_folder(folder)  # a run killed before it wrote anything else may start again
    with run_lock(folder):
        assert running_pid(folder) == os.getpid()
    assert not (folder / LOCK_FILE).exists()
