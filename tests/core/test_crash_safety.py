"""Fault injection: a real `lmforge` process SIGKILLed at 20 points of each crash-safe writer.

Each writer's run is traced once (LMFORGE_FAULT_TRACE lists the fault points it passes, see
lmforge.atomic.fault_point); then, for 20 points spread over that trace, a fresh run is killed
there (LMFORGE_FAULT_KILL), what it had saved is checked, and the run is continued: it must end
with the very weights of a run that was never killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lmforge.atomic import is_complete
from tests.core.test_pipeline import write_config

pytestmark = pytest.mark.slow

KILLS = 20
FINAL = "checkpoints/step-00000008/model.safetensors"


def lmforge(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "LMFORGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-P", "-m", "lmforge", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=300)


def run_args(config: Path, name: str, *extra: str) -> tuple[str, ...]:
    return ("run", str(config), "--set", f"name={name}", *extra)


def kill_points(*traces: Path, count: int = KILLS) -> list[tuple[int, int, str]]:
    """`count` fault points spread evenly over traced runs, as (trace index, step, where)."""
    points = [(index, int(step), f"{name}: {what}")
              for index, trace in enumerate(traces)
              for step, name, what in (line.split("\t") for line in trace.read_text().splitlines())]
    assert len(points) >= count, f"only {len(points)} fault points: {points}"
    return [points[round(i * (len(points) - 1) / (count - 1))] for i in range(count)]


def weights(path: Path) -> dict:
    return {name: tensor.tolist() for name, tensor in load_file(path).items()}


def complete_checkpoints_load(run_dir: Path, reference: Path) -> None:
    """Every checkpoint the killed run left complete holds the reference run's weights."""
    for folder in sorted((run_dir / "checkpoints").glob("step-*")):
        if is_complete(folder):
            assert weights(folder / "model.safetensors") == weights(
                reference / "checkpoints" / folder.name / "model.safetensors"), folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crash")


def trained(root: Path, **trainer) -> tuple[Path, Path]:
    """A config of 8 steps and the reference run of it, keeping every checkpoint."""
    root.mkdir(exist_ok=True)
    config = write_config(root, "gpt", max_steps=8, checkpoint_every=2, eval_every=2,
                          keep_last=2, **trainer)
    done = lmforge(root, *run_args(config, "reference", "--set", "trainer.keep_last=100"))
    assert done.returncode == 0, done.stderr
    return config, root / "runs" / "reference"


def kill_and_continue(root: Path, config: Path, path_filter: str, reference: Path,
                      check_after_kill) -> int:
    """Kill runs of `config` at 20 fault points on paths containing `path_filter`; after each,
    check what was saved, resume, and compare the final weights with the reference's."""
    trace = root / "trace.tsv"
    traced = lmforge(root, *run_args(config, "traced"), LMFORGE_FAULT_TRACE=str(trace),
                     LMFORGE_FAULT_PATH=path_filter)
    assert traced.returncode == 0, traced.stderr
    survived = 0
    for _, step, where in kill_points(trace):
        name = f"k{step}"  # run names must not contain the filter
        killed = lmforge(root, *run_args(config, name), LMFORGE_FAULT_KILL=str(step),
                         LMFORGE_FAULT_PATH=path_filter)
        assert killed.returncode == -signal.SIGKILL, f"{where}: not killed: {killed.stderr}"
        run_dir = root / "runs" / name
        check_after_kill(run_dir)
        complete_checkpoints_load(run_dir, reference)
        resumed = lmforge(root, *run_args(config, name, "--resume"))
        assert resumed.returncode == 0, f"{where}: {resumed.stderr}"
        assert weights(run_dir / FINAL) == weights(reference / FINAL), where
        survived += 1
        shutil.rmtree(run_dir)
    return survived


def test_a_kill_anywhere_in_a_checkpoint_save_loses_nothing(corpus):
    config, reference = trained(corpus / "a")
    assert kill_and_continue(corpus / "a", config, "/checkpoints/", reference,
                             lambda run_dir: None) == KILLS


def test_a_kill_anywhere_in_a_best_weights_save_loses_nothing(corpus):
    config, reference = trained(corpus / "b", restore_best=True)

    def best_is_a_saved_step(run_dir: Path) -> None:
        folder = run_dir / "best"
        if is_complete(folder):
            step = json.loads((folder / "meta.json").read_text())["step"]
            assert weights(folder / "model.safetensors") == weights(
                reference / "checkpoints" / f"step-{step:08d}" / "model.safetensors")

    assert kill_and_continue(corpus / "b", config, "best", reference,
                             best_is_a_saved_step) == KILLS


def test_a_kill_anywhere_in_a_token_cache_build_loses_nothing(corpus):
    (corpus / "c").mkdir()
    # enough lines for a dozen chunks of documents, each a fault point of the cache build
    (corpus / "c" / "corpus.txt").write_text("".join(f"line {i}: a fox number {i % 97}.\n"
                                                     for i in range(12_000)))
    config, reference = trained(corpus / "c")
    arrays = {p.name: p.read_bytes() for p in next((reference / "data").glob("tokens-*")).glob(
        "*.bin")}

    def cache_is_whole_or_ignored(run_dir: Path) -> None:
        for folder in (run_dir / "data").glob("tokens-*"):
            if is_complete(folder):
                assert {p.name: p.read_bytes() for p in folder.glob("*.bin")} == arrays

    assert kill_and_continue(corpus / "c", config, "tokens-", reference,
                             cache_is_whole_or_ignored) == KILLS


def test_a_kill_anywhere_in_a_data_preparation_loses_nothing(corpus):
    root = corpus / "d"
    config, reference = trained(root)
    splits = {p.name: p.read_bytes()
              for p in next((reference / "data").glob("prepared-*")).glob("*.jsonl")}

    def prepare(name: str, *extra: str, **env: str) -> subprocess.CompletedProcess:
        return lmforge(root, "data", "prepare", str(config), "--set", f"name={name}", *extra,
                       LMFORGE_FAULT_PATH="/data/", **env)

    # a first preparation, and a second with --force: the replacement of a whole folder
    first, again = root / "trace-first.tsv", root / "trace-again.tsv"
    assert prepare("traced", LMFORGE_FAULT_TRACE=str(first)).returncode == 0
    assert prepare("traced", "--force", LMFORGE_FAULT_TRACE=str(again)).returncode == 0
    survived = 0
    for phase, step, where in kill_points(first, again):
        name = f"k{phase}-{step}"
        if phase == 1:
            assert prepare(name).returncode == 0
        killed = prepare(name, *(["--force"] if phase else []), LMFORGE_FAULT_KILL=str(step))
        assert killed.returncode == -signal.SIGKILL, f"{where}: not killed: {killed.stderr}"
        run_dir = root / "runs" / name
        complete = [f for f in (run_dir / "data").glob("prepared-*") if is_complete(f)]
        for folder in complete:
            assert {p.name: p.read_bytes() for p in folder.glob("*.jsonl")} == splits, where
        if phase == 1:
            assert complete, f"{where}: the earlier preparation was lost"
        resumed = lmforge(root, *run_args(config, name, "--resume"))
        assert resumed.returncode == 0, f"{where}: {resumed.stderr}"
        assert weights(run_dir / FINAL) == weights(reference / FINAL), where
        survived += 1
        shutil.rmtree(run_dir)
    assert survived == KILLS
