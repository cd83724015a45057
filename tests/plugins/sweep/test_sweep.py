"""`lmforge sweep` end to end on tiny runs: trials, failures, best.yaml, resume, Optuna pruning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.plugins.sweep.search import SweepOptions, run_sweep
from lmforge.run.checkpoint import complete_checkpoints
from tests.conftest import builtin_registry
from tests.core.test_pipeline import write_config


@pytest.fixture(autouse=True)
def _one_thread_per_trial(monkeypatch):
    # tiny models on a shared machine: more threads only fight over the cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def sweep(config: Path, *params: str, **options) -> dict:
    return run_sweep(str(config), SweepOptions(params=params, **options), Console(quiet=True),
                     builtin_registry())


def trials_in(folder: Path) -> list[dict]:
    return json.loads((folder / "sweep.json").read_text())["trials"]


def test_unknown_key_path_fails_before_any_trial(tmp_path):
    config = write_config(tmp_path)
    with pytest.raises(LmforgeError) as caught:
        sweep(config, "trainer.lrr=loguniform(1e-4,1e-2)", sampler="random")
    message = str(caught.value)
    assert message.startswith("--param trainer.lrr=loguniform(0.0001, 0.01): the value 0.0001")
    assert "trainer.lrr: unknown setting" in message
    with pytest.raises(LmforgeError, match=r"model.dropout=uniform\(0.0, 1.5\): the value 1.5"):
        sweep(config, "model.dropout=uniform(0,1.5)", sampler="random")
    assert not (tmp_path / "runs").exists()


def test_grid_sweep_goes_on_after_a_failed_trial_and_writes_the_best_config(registry, tmp_path,
                                                                           monkeypatch):
    # two trials at once on "2 cores" get a thread each, whatever the environment says
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    # one evaluation, at the end: each costs a loss plot, the bulk of a tiny trial's time
    config = write_config(tmp_path, max_steps=20, eval_every=20, checkpoint_every=20)
    missing = tmp_path / "missing.txt"
    params = ("trainer.lr=choice(0.01, 0.0003)",
              f"data.source.paths[0]=choice({tmp_path / 'corpus.txt'}, {missing})")
    summary = sweep(config, *params, sampler="grid", trials=3, jobs=2)

    folder = tmp_path / "runs" / "tiny-gpt"
    stored = {t["number"]: t for t in trials_in(folder)}
    assert [stored[n]["status"] for n in (1, 2, 3)] == ["finished", "failed", "finished"]
    assert [stored[n]["params"]["trainer.lr"] for n in (1, 2, 3)] == [0.01, 0.01, 0.0003]
    threads = [json.loads((folder / f"trial-{n}" / "metrics.jsonl").read_text().splitlines()[0])
               ["threads"] for n in (1, 3)]
    assert threads == [1, 1]
    assert "missing.txt" in stored[2]["error"] and stored[2]["objective"] is None
    for number in (1, 3):
        figures = json.loads((folder / f"trial-{number}" / "eval.json").read_text())
        assert stored[number]["objective"] == figures["val"]["loss"]
    best_number = min((1, 3), key=lambda n: stored[n]["objective"])
    assert summary["best"]["number"] == best_number
    assert [t["number"] for t in summary["trials"]][0] == best_number

    best = load_config(folder / "best.yaml", registry)
    assert best.name == "tiny-gpt-best" and best.runs_dir == tmp_path / "runs"
    assert best.components["trainer"].settings.lr == stored[best_number]["params"]["trainer.lr"]
    assert best.data.source.settings.paths == [str(tmp_path / "corpus.txt")]

    before = (folder / "sweep.json").read_text()
    again = subprocess.run([sys.executable, "-m", "lmforge", "sweep", str(config), "--json",
                            "--sampler", "grid", "--trials", "3",
                            *(arg for p in params for arg in ("--param", p))],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["best"]["number"] == best_number
    assert "started" not in again.stderr  # every trial had ended: none is run again
    assert (folder / "sweep.json").read_text() == before
    with pytest.raises(LmforgeError, match="defined differently.*\n  params: saved"):
        sweep(config, params[0], sampler="grid", trials=3)
    assert (folder / "sweep.json").read_text() == before


@pytest.mark.slow  # about 35 s: kept out of make test to hold it under 15 minutes
def test_stopped_sweep_resumes_the_interrupted_trial_and_redoes_nothing(tmp_path):
    # trial 2 is interrupted after its first checkpoint (step 25) of 600: a margin counted in
    # steps, so however fast the machine, the interrupt lands long before the trial would end
    config = write_config(tmp_path, max_steps=10, eval_every=100_000, checkpoint_every=25,
                          log_every=25)
    param = "trainer.max_steps=choice(10, 600)"
    command = [sys.executable, "-m", "lmforge", "sweep", str(config), "--sampler", "grid",
               "--param", param]
    folder = tmp_path / "runs" / "tiny-gpt"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not ((folder / "sweep.json").exists() and trials_in(folder)[0]["status"] == "finished"
               and complete_checkpoints(folder / "trial-2")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped: rerun the same command" in out
    assert [t["status"] for t in trials_in(folder)] == ["finished", "running"]
    assert not (folder / "trial-2" / "eval.json").exists()

    first = folder / "trial-1"
    untouched = {name: ((first / name).read_bytes(), (first / name).stat().st_mtime_ns)
                 for name in ("eval.json", "metrics.jsonl", "config.yaml")}
    summary = sweep(config, param, sampler="grid")
    assert not summary["stopped"]
    assert [t["status"] for t in trials_in(folder)] == ["finished", "finished"]
    assert untouched == {name: ((first / name).read_bytes(), (first / name).stat().st_mtime_ns)
                         for name in untouched}
    sessions = [json.loads(line) for line in
                (folder / "trial-2" / "metrics.jsonl").read_text().splitlines()]
    sessions = [r for r in sessions if r["event"] == "run"]
    assert [r["resumed"] for r in sessions] == [False, True] and sessions[1]["step"] > 0
    assert (folder / "trial-2" / "eval.json").exists()


@pytest.mark.slow  # about 35 s: kept out of make test to hold it under 15 minutes
@pytest.mark.skipif(__import__("importlib").util.find_spec("optuna") is None,
                    reason="optuna is not installed (the tune extra)")
def test_tpe_sweep_prunes_a_trial_whose_validation_loss_lags(registry, tmp_path):
    import optuna

    config = write_config(tmp_path, max_steps=300, eval_every=60, checkpoint_every=100,
                          log_every=50, warmup_steps=5)
    raw = yaml.safe_load(config.read_text())
    # seed 3 draws lr 0.02 first, then 1e-6 twice: trials that lag the first from their first
    # evaluation on
    raw["sweep"] = {"trials": 3, "seed": 3, "prune_startup_trials": 1,
                    "params": {"trainer.lr": "choice(0.02, 0.000001)"}}
    config.write_text(yaml.safe_dump(raw))
    summary = sweep(config)

    assert summary["sampler"] == "tpe"
    folder = tmp_path / "runs" / "tiny-gpt"
    stored = trials_in(folder)
    pruned = [t for t in stored if t["status"] == "pruned"]
    assert [t["params"]["trainer.lr"] for t in stored] == [0.02, 0.000001, 0.000001]
    assert [t["status"] for t in stored] == ["finished", "pruned", "pruned"]
    for trial in pruned:
        run_dir = Path(trial["run_dir"])
        assert not (run_dir / "eval.json").exists()
        assert trial["pruned_at"] == 60 and complete_checkpoints(run_dir)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{folder / 'optuna.db'}")
    states = {t.number + 1: t.state.name for t in study.trials}
    assert states == {t["number"]: {"finished": "COMPLETE", "pruned": "PRUNED"}[t["status"]]
                      for t in stored}
    assert load_config(folder / "best.yaml", registry).components["trainer"].settings.lr == 0.02


def test_the_first_trial_is_the_config_as_it_stands(tmp_path, registry):
    from lmforge.plugins.sweep.search import make_plan

    config = write_config(tmp_path, max_steps=4, eval_every=2)  # trainer.lr 3e-3
    plan = make_plan(str(config), SweepOptions(params=("trainer.lr=loguniform(1e-4,1e-2)",
                                                       "model.dropout=uniform(0,0.5)"),
                                               sampler="random", trials=1), registry)
    assert plan.baseline == {"trainer.lr": 3e-3, "model.dropout": 0.1}
    sweep(config, "trainer.lr=loguniform(1e-4,1e-2)", "model.dropout=uniform(0,0.5)",
          sampler="random", trials=1)
    assert trials_in(tmp_path / "runs" / "tiny-gpt")[0]["params"] == plan.baseline
    # a config value outside the searched range cannot stand for the config: no baseline
    outside = make_plan(str(config), SweepOptions(params=("trainer.lr=uniform(0.01,0.1)",),
                                                  sampler="random"), registry)
    assert outside.baseline is None
    off = make_plan(str(config), SweepOptions(params=("trainer.lr=loguniform(1e-4,1e-2)",),
                                              overrides=("sweep.baseline_first=false",),
                                              sampler="random"), registry)
    assert off.baseline is None


@pytest.mark.skipif(__import__("importlib").util.find_spec("optuna") is None,
                    reason="optuna is not installed (the tune extra)")
def test_tpe_asks_the_baseline_first(tmp_path):
    from lmforge.plugins.sweep.space import parse_param
    from lmforge.plugins.sweep.tpe import TpeSearch

    params = [parse_param("trainer.lr=loguniform(1e-4,1e-2)"), parse_param("model.n=int(1,4)")]
    search = TpeSearch(tmp_path, params, seed=0, direction="minimize", prune=False,
                       prune_startup_trials=0, prune_warmup_steps=0)
    number, proposed = search.ask({"trainer.lr": 1e-3, "model.n": 2})
    assert number == 0 and proposed == {"trainer.lr": 1e-3, "model.n": 2}
    assert search.ask()[0] == 1


def test_trials_do_not_load_plugins_from_the_working_directory(tmp_path, monkeypatch):
    # `python -m` would put the working directory first on sys.path, so a stray .dist-info
    # there would inject its plugin into every trial
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LMFORGE_LOAD_PLUGINS")  # trials load installed plugins, as for a user
    dist = tmp_path / "stray-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stray\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lmforge]\nstray = stray_plugin\n")
    (tmp_path / "stray_plugin.py").write_text(
        "from pathlib import Path\nPath('injected').write_text('loaded')\n")
    config = write_config(tmp_path, max_steps=3, eval_every=3, checkpoint_every=3)
    sweep(config, "trainer.lr=choice(0.003)", sampler="grid")
    assert trials_in(tmp_path / "runs" / "tiny-gpt")[0]["status"] == "finished"
    assert not (tmp_path / "injected").exists()


@pytest.mark.slow
def test_nproc_runs_each_trial_in_that_many_processes(tmp_path):
    config = write_config(tmp_path, max_steps=4, eval_every=4, checkpoint_every=4)
    summary = sweep(config, "trainer.lr=choice(0.003)", sampler="grid", nproc=2)
    assert summary["trials"][0]["status"] == "finished"
    first = (tmp_path / "runs" / "tiny-gpt" / "trial-1" / "metrics.jsonl").read_text()
    assert json.loads(first.splitlines()[0])["processes"] == 2
