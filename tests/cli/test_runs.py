"""`lmforge runs list` and `runs clean` on real tiny runs: finished, interrupted, classifier,
not started, a corrupt config and folders that are not runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.filesize import decimal

from lmforge.cli.runs import run_folder
from lmforge.errors import LmforgeError
from lmforge.plugins.tasks.lm_task import LanguageModeling
from lmforge.run.checkpoint import complete_checkpoints, step_folders
from lmforge.run.folder import LOCK_FILE
from lmforge.run.pipeline import load_run, run
from tests.cli import test_cli_classify
from tests.conftest import builtin_registry
from tests.core.test_pipeline import quiet, step_losses, write_config

from .test_cli import run as lmforge

WIDE = {"COLUMNS": "200"}  # the table is not cut to a pipe's 80 columns


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Press Ctrl-C as the batch of `step` (0-based) is drawn, once."""
    original = LanguageModeling.train_batch

    def interrupting(self, index, batch_size, seed):
        if index == step and not getattr(self, "_interrupted", False):
            self._interrupted = True
            signal.raise_signal(signal.SIGINT)
        return original(self, index, batch_size, seed)

    monkeypatch.setattr(LanguageModeling, "train_batch", interrupting)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """runs/ with a finished and an interrupted language model (the same config), a classifier,
    a run not started yet, a corrupt config, a plain folder and a folder holding a run."""
    root = tmp_path_factory.mktemp("runs")
    registry = builtin_registry()
    config = write_config(root, "gpt", keep_last=3)  # checkpoints every 4 of 12 steps
    run(str(config), registry, ("name=done",), console=quiet())
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at_step(patch, 9)
        summary = run(str(config), registry, ("name=cut",), console=quiet())
    assert summary["train"]["interrupted"]
    classifier = test_cli_classify.write_config(root)
    run(str(classifier), registry, ("trainer.max_steps=10", "trainer.eval_every=5"),
        console=quiet())
    runs = root / "runs"
    (runs / "fresh").mkdir()
    shutil.copy(runs / "done" / "config.yaml", runs / "fresh" / "config.yaml")
    (runs / "broken").mkdir()
    (runs / "broken" / "config.yaml").write_text("model:\n  type: [gpt\n", encoding="utf-8")
    (runs / "notes").mkdir()
    (runs / "notes" / "todo.txt").write_text("try a bigger model\n", encoding="utf-8")
    (runs / "sweep" / "trial-1").mkdir(parents=True)
    shutil.copy(runs / "done" / "config.yaml", runs / "sweep" / "trial-1" / "config.yaml")
    return runs


def files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_list_json_describes_every_run(runs_dir):
    result = lmforge("runs", "list", "--dir", str(runs_dir), "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    by_name = {r["name"]: r for r in listing["runs"]}
    assert list(by_name) == ["broken", "cut", "done", "fresh", "tiny-sentiment"]

    done = by_name["done"]
    evals = [json.loads(line) for line in (runs_dir / "done" / "metrics.jsonl").open()]
    assert done["state"] == "finished" and (done["task"], done["model"]) == ("lm", "gpt")
    assert done["checkpoint_step"] == done["logged_step"] == 12
    assert done["best_val_loss"] == min(e["val_loss"] for e in evals if e["event"] == "eval")
    assert done["bytes"] == sum(files(runs_dir / "done").values())
    assert done["val_accuracy"] is None and done["errors"] == []

    cut = by_name["cut"]
    assert cut["state"] == "interrupted" and cut["checkpoint_step"] == 9

    classifier = by_name["tiny-sentiment"]
    figures = json.loads((runs_dir / "tiny-sentiment" / "eval.json").read_text())
    assert (classifier["task"], classifier["model"]) == ("classify", "textcnn")
    assert classifier["state"] == "finished" and classifier["checkpoint_step"] == 10
    assert classifier["val_accuracy"] == figures["val"]["accuracy"]

    assert by_name["fresh"]["state"] == "not started" and by_name["fresh"]["task"] == "lm"
    broken = by_name["broken"]
    assert broken["task"] is None and broken["state"] == "not started"
    assert broken["errors"] == [f"{runs_dir / 'broken' / 'config.yaml'}:3: not valid YAML: "
                                f"expected ',' or ']', but got '<stream end>'"]
    assert listing["not_runs"] == [{"name": "notes", "runs_inside": 0},
                                   {"name": "sweep", "runs_inside": 1}]


def test_list_table_for_people(runs_dir):
    result = lmforge("runs", "list", "--dir", str(runs_dir), env=WIDE)
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("│")}
    header = [cell.strip() for cell in
              next(line for line in result.stdout.splitlines() if "best val loss" in line)
              .split("┃")[2:-1]]
    assert header == ["task", "model", "steps", "best val loss", "val accuracy", "size", "state"]
    assert rows["done"][:3] == ["lm", "gpt", "12"] and rows["done"][-1] == "finished"
    assert rows["cut"][2] == "9" and rows["cut"][-1] == "interrupted"
    assert rows["tiny-sentiment"][4].endswith("%") and rows["done"][4] == "-"
    assert rows["broken"][:2] == ["?", "?"] and rows["fresh"][-1] == "not started"
    assert "broken: " + str(runs_dir / "broken" / "config.yaml") + ":3: not valid YAML" \
        in result.stdout
    assert "skipped 2 folder(s) that are not runs (no config.yaml): notes, sweep" in result.stdout
    assert f"sweep holds 1 run(s): lmforge runs list --dir {runs_dir / 'sweep'}" in result.stdout


def test_list_without_a_runs_folder_or_runs(tmp_path):
    missing = lmforge("runs", "list", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no runs folder at runs: `lmforge run` creates it" in missing.stderr
    (tmp_path / "runs").mkdir()
    empty = lmforge("runs", "list", cwd=tmp_path)
    assert empty.returncode == 0 and empty.stdout.strip() == "no runs in runs"


def test_dry_run_deletes_nothing(runs_dir, tmp_path):
    copy = tmp_path / "done"
    shutil.copytree(runs_dir / "done", copy)
    before = files(copy)
    result = lmforge("runs", "clean", "done", "--dir", str(tmp_path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert files(copy) == before
    assert "would remove checkpoints/step-00000004" in result.stdout
    assert "would remove checkpoints/step-00000008" in result.stdout
    assert "would remove data/tokens-" in result.stdout
    assert "kept the latest complete checkpoint, step-00000012" in result.stdout


def test_clean_keeps_what_eval_needs(runs_dir, tmp_path):
    copy = tmp_path / "done"
    shutil.copytree(runs_dir / "done", copy)
    checkpoints = copy / "checkpoints"
    stale = checkpoints / f".step-00000016.tmp-{dead_pid()}"
    live = checkpoints / f".step-00000016.tmp-{os.getpid()}"  # a save still being written
    unfinished = checkpoints / "step-00000016"  # a deletion cut short: no marker
    for folder in (stale, live, unfinished):
        shutil.copytree(checkpoints / "step-00000012", folder)
    (unfinished / "COMPLETE").unlink()
    before = files(copy)

    result = lmforge("runs", "clean", "done", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    after = files(copy)
    assert [p.name for _, p in step_folders(copy)] == ["step-00000012"]
    assert complete_checkpoints(copy) == [checkpoints / "step-00000012"]
    assert not stale.exists() and live.exists()
    assert not list((copy / "data").glob("tokens-*"))
    kept = {path: size for path, size in before.items()
            if not path.startswith(("data/tokens-", "checkpoints/step-00000004",
                                    "checkpoints/step-00000008", "checkpoints/step-00000016",
                                    f"checkpoints/{stale.name}"))}
    assert after == kept
    assert any(path.startswith("data/prepared-") for path in after)
    freed = sum(before.values()) - sum(after.values())
    assert f"freed {decimal(freed)} in {copy}" in result.stdout

    scored = lmforge("eval", str(copy), "--split", "test", "--json")
    assert scored.returncode == 0, scored.stderr
    original = json.loads((runs_dir / "done" / "eval.json").read_text())["test"]
    figures = json.loads(scored.stdout)["test"]
    assert figures["checkpoint"] == "step-00000012" and figures["tokens"] == original["tokens"]
    assert figures["loss"] == pytest.approx(original["loss"], rel=1e-6)  # another batch size

    rebuilt = [p.name for p in (copy / "data").glob("tokens-*")]  # eval encoded the split again
    again = lmforge("runs", "clean", "done", "--dir", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert [line.split(" (")[0] for line in again.stdout.splitlines()[:-1]] == [
        f"removed data/{name}" for name in rebuilt]


def test_clean_interrupted_run_then_resume_matches_the_uninterrupted_run(
        runs_dir, tmp_path, registry, monkeypatch):
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    shutil.copytree(runs_dir / "cut", tmp_path / "cut")
    result = lmforge("runs", "clean", "cut", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "removed checkpoints/step-00000008" in result.stdout
    assert complete_checkpoints(tmp_path / "cut") == [
        tmp_path / "cut" / "checkpoints" / "step-00000009"]

    config = runs_dir.parent / "gpt.yaml"
    run(str(config), registry, ("name=cut", f"runs_dir={tmp_path}"), resume=True,
        console=quiet())
    assert step_losses(tmp_path / "cut") == step_losses(runs_dir / "done")
    resumed = load_run(tmp_path / "cut", registry).model.state_dict()
    uninterrupted = load_run(runs_dir / "done", registry).model.state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../done", "/tmp"])
def test_clean_refuses_a_path_for_a_name(runs_dir, name):
    with pytest.raises(LmforgeError, match="without path separators or '..'"):
        run_folder(runs_dir, name)


def test_clean_refuses_a_folder_that_is_not_a_run(runs_dir):
    before = files(runs_dir / "notes")
    result = lmforge("runs", "clean", "notes", "--dir", str(runs_dir))
    assert result.returncode == 2
    assert f"{runs_dir / 'notes'} is not a run folder (it has no config.yaml)" in result.stderr
    assert files(runs_dir / "notes") == before


def test_a_run_in_use_lists_as_running_and_is_not_cleaned(runs_dir):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lock = runs_dir / "cut" / LOCK_FILE
    try:
        lock.write_text(f"{holder.pid}\n")
        before = files(runs_dir / "cut")
        listing = json.loads(lmforge("runs", "list", "--dir", str(runs_dir), "--json").stdout)
        assert {r["name"]: r["state"] for r in listing["runs"]}["cut"] == "running"
        result = lmforge("runs", "clean", "cut", "--dir", str(runs_dir))
        assert result.returncode == 2
        assert f"in use by another lmforge process (pid {holder.pid})" in result.stderr
        assert files(runs_dir / "cut") == before
    finally:
        lock.unlink(missing_ok=True)
        holder.kill()
        holder.wait()
