"""A refused run changes nothing in the run folder: every file stays byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
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
