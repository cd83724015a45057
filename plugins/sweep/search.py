"""`lmforge sweep`: hyperparameter search, each trial a `lmforge run` in a process of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.config import load_config, parse_key_path
from lmforge.errors import ConfigError, LmforgeError
from lmforge.host.registry import Registry
from lmforge.plugins.sweep.space import (
    Param,
    SweepSettings,
    grid_params,
    grid_size,
    parse_param,
    parse_spec,
    random_params,
    yaml_scalar,
)
from lmforge.plugins.sweep.state import SweepState, infer_direction, parse_objective, read_objective
from lmforge.plugins.sweep.tpe import TpeSearch, optuna_available
from lmforge.run.folder import EVAL_FILE, read_metrics

POLL_SECONDS = 0.25
DEFAULT_TRIALS = 10
STDERR_TAIL_LINES = 15
RESERVED_KEYS = ("name", "runs_dir")  # the sweep sets them for each trial


@dataclass
class SweepOptions:
    """What the command line asked for; None leaves the config's `sweep:` section to decide."""

    params: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    trials: int | None = None
    sampler: str | None = None
    seed: int | None = None
    objective: str | None = None
    direction: str | None = None
    jobs: int | None = None
    nproc: int | None = None
    grid_points: int | None = None
    prune: bool | None = None


@dataclass
class SweepPlan:
    """A sweep with every choice made: the params, the sampler, the objective, the folder."""

    config_path: str
    overrides: tuple[str, ...]
    name: str
    runs_dir: Path
    params: list[Param]
    sampler: str
    objective: str
    direction: str
    trials: int
    jobs: int
    settings: SweepSettings
    config_hash: str
    baseline: dict[str, Any] | None = None  # the config's own values, trial 1's params

    @property
    def folder(self) -> Path:
        return self.runs_dir / self.name

    def definition(self) -> dict[str, Any]:
        """What a rerun must match to continue this sweep (not trials, jobs or processes: those
        may change)."""
        return {"config_hash": self.config_hash, "overrides": list(self.overrides),
                "params": {p.key: p.spec for p in self.params}, "sampler": self.sampler,
                "seed": self.settings.seed, "objective": self.objective,
                "direction": self.direction, "grid_points": self.settings.grid_points,
                "prune": self.settings.prune if self.sampler == "tpe" else None,
                "baseline": self.baseline}


def make_plan(config_path: str, options: SweepOptions, registry: Registry) -> SweepPlan:
    """Resolve options against the config's `sweep:` section and check every param's key path."""
    from lmforge.run.pipeline import config_hash

    base = load_config(config_path, registry, options.overrides)
    section = base.sections.get("sweep") or SweepSettings()
    chosen = {key: value for key, value in vars(options).items()
              if value is not None and key not in ("params", "overrides")}
    settings = section.model_copy(update=chosen)
    params = {key: parse_spec(key, spec, where=f"{config_path}: sweep.params.{key}={spec}")
              for key, spec in section.params.items()}
    params.update((p.key, p) for p in map(parse_param, options.params))
    if not params:
        raise LmforgeError("nothing to search: give --param KEY.PATH=SPEC (e.g. "
                           "--param 'trainer.lr=loguniform(1e-4,1e-2)') or a sweep.params "
                           f"section in {config_path}")
    for param in params.values():
        _check_param(config_path, options.overrides, param, registry)
    sampler = settings.sampler or ("tpe" if optuna_available() else "random")
    if sampler == "tpe" and not optuna_available():
        raise LmforgeError("the tpe sampler needs optuna: pip install 'lmforge[tune]', or use "
                           "--sampler random")
    parse_objective(settings.objective)
    direction = settings.direction or infer_direction(settings.objective)
    trials = settings.trials or DEFAULT_TRIALS
    if sampler == "grid":
        trials = min(settings.trials or sys.maxsize,
                     grid_size(list(params.values()), settings.grid_points))
    baseline = (_baseline(base.to_dict(), list(params.values()))
                if settings.baseline_first and sampler != "grid" else None)
    return SweepPlan(config_path, tuple(options.overrides), base.name, base.runs_dir,
                     list(params.values()), sampler, settings.objective, direction, trials,
                     settings.jobs, settings, config_hash(base), baseline)


def _baseline(resolved: dict[str, Any], params: list[Param]) -> dict[str, Any] | None:
    """The config's own value of every searched setting, or None when one is unset or lies
    outside its range (then no trial can stand for the config as it is)."""
    values = {}
    for param in params:
        node: Any = resolved
        for part in parse_key_path(param.key):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return None
        if not param.contains(node):
            return None
        values[param.key] = node
    return values


def _check_param(config_path: str, overrides: tuple[str, ...], param: Param,
                 registry: Registry) -> None:
    """Validate the config with the param's extreme values, before any trial runs."""
    if param.key.split(".")[0] in RESERVED_KEYS:
        raise LmforgeError(f"--param {param.key}: the sweep sets {param.key} for each trial; "
                           f"search another setting")
    for value in param.extremes():
        try:
            load_config(config_path, registry,
                        (*overrides, f"{param.key}={yaml_scalar(value)}"))
        except ConfigError as exc:
            raise LmforgeError(f"--param {param.key}={param.spec}: the value {value!r} does not "
                               f"make a valid config:\n{exc}") from None


class _StopRequests:
    """Ctrl-C (or SIGTERM) on the sweep: counted, and passed on to each trial as one SIGINT per
    request, so the trials, in sessions of their own, checkpoint instead of being orphaned."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self.reason: str | None = None  # set when the sweep itself must stop

    def _handle(self, signum, frame) -> None:
        self.count += 1

    @contextlib.contextmanager
    def installed(self):
        # handlers can only be installed from the main thread; elsewhere the caller's stay
        previous = ({number: signal.signal(number, self._handle) for number in self.SIGNALS}
                    if threading.current_thread() is threading.main_thread() else {})
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


@dataclass
class _Trial:
    record: dict[str, Any]
    process: subprocess.Popen
    stderr: Path
    started: float = field(default_factory=time.monotonic)
    interrupts_sent: int = 0
    pruning: bool = False
    reported: set[int] = field(default_factory=set)

    @property
    def run_dir(self) -> Path:
        return Path(self.record["run_dir"])


class Sweep:
    """Runs a plan's trials, `jobs` at a time, recording each in sweep.json as it ends."""

    def __init__(self, plan: SweepPlan, console: Console) -> None:
        self.plan = plan
        self.console = console
        self.state = SweepState.open(plan.folder, plan.definition())
        self.tpe = None
        if plan.sampler == "tpe":
            s = plan.settings
            self.tpe = TpeSearch(plan.folder, plan.params, s.seed, plan.direction, s.prune,
                                 s.prune_startup_trials, s.prune_warmup_steps)
            self.tpe.abandon_unknown({t["optuna_trial"] for t in self.state.trials
                                      if t["status"] == "running"})
        self.stop = _StopRequests()

    def run(self) -> bool:
        """Run until every trial has ended or Ctrl-C; True when stopped early."""
        to_resume = [t for t in self.state.trials if t["status"] == "running"]
        running: list[_Trial] = []
        with self.stop.installed():
            while True:
                while not self.stop.count and len(running) < self.plan.jobs:
                    resume = bool(to_resume)
                    record = to_resume.pop(0) if resume else self._new_trial()
                    if record is None:
                        break
                    running.append(self._start(record, resume))
                if not running:
                    break
                time.sleep(POLL_SECONDS)
                for trial in list(running):
                    self._forward_interrupts(trial)
                    if self.tpe is not None and not trial.pruning:
                        self._watch(trial)
                    if trial.process.poll() is not None:
                        self._end(trial)
                        running.remove(trial)
        if self.stop.reason:
            raise LmforgeError(self.stop.reason)
        return self.stop.count > 0

    def _new_trial(self) -> dict[str, Any] | None:
        number = len(self.state.trials) + 1
        if number > self.plan.trials:
            return None
        optuna_trial = None
        baseline = self.plan.baseline if number == 1 else None
        if self.tpe is not None:
            optuna_trial, params = self.tpe.ask(baseline)
        elif baseline is not None:
            params = dict(baseline)
        elif self.plan.sampler == "grid":
            params = grid_params(self.plan.params, self.plan.settings.grid_points, number)
        else:
            params = random_params(self.plan.params, self.plan.settings.seed, number)
        return self.state.add(number, params, self.plan.folder / f"trial-{number}", optuna_trial)

    def _command(self, record: dict[str, Any], resume: bool) -> list[str]:
        plan = self.plan
        sets = [*plan.overrides, f"runs_dir={yaml_scalar(str(plan.folder))}",
                f"name=trial-{record['number']}",
                *(f"{key}={yaml_scalar(value)}" for key, value in record["params"].items())]
        # -P: `-m` would put the working directory first on sys.path, where a stray
        # .dist-info would inject its plugin into every trial
        command = [sys.executable, "-P", "-m", "lmforge", "run", plan.config_path]
        for assignment in sets:
            command += ["--set", assignment]
        if plan.settings.nproc > 1:
            command += ["--nproc", str(plan.settings.nproc)]
        return command + (["--resume"] if resume else [])

    def _start(self, record: dict[str, Any], resume: bool) -> _Trial:
        env = {**os.environ, "LMFORGE_NO_PROGRESS": "1"}
        processes = self.plan.jobs * self.plan.settings.nproc
        if processes > 1:
            # trials (and their processes) side by side share the cores, not each take them all
            threads = str(max(1, (os.cpu_count() or 1) // processes))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        logs = self.plan.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        name = f"trial-{record['number']}"
        stderr = logs / f"{name}.err"
        with open(logs / f"{name}.out", "a") as out, open(stderr, "a") as err:
            # A session of its own: a Ctrl-C in the terminal reaches the sweep only, which
            # passes it on once, so each trial checkpoints instead of stopping at once.
            process = subprocess.Popen(self._command(record, resume), stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        params = ", ".join(f"{k}={_short(v)}" for k, v in record["params"].items())
        self.console.print(f"{name} {'resumed' if resume else 'started'}: {params}",
                           highlight=False)
        trial = _Trial(record, process, stderr)
        if self.tpe is not None:
            trial.reported = self.tpe.reported_steps(record["optuna_trial"])
        return trial

    def _forward_interrupts(self, trial: _Trial) -> None:
        while trial.interrupts_sent < self.stop.count and trial.process.poll() is None:
            trial.process.send_signal(signal.SIGINT)
            trial.interrupts_sent += 1

    def _watch(self, trial: _Trial) -> None:
        """Report each new validation loss to Optuna; interrupt the trial when it says prune."""
        for record in read_metrics(trial.run_dir, "eval"):
            if "val_loss" not in record:
                continue
            step = record["step"]
            if step in trial.reported:
                continue
            trial.reported.add(step)
            # the pruner compares in the study's direction; a loss is better low
            value = record["val_loss"] if self.plan.direction == "minimize" else -record["val_loss"]
            if self.tpe.report(trial.record["optuna_trial"], step, value):
                trial.pruning = True
                trial.record["pruned_at"] = step
                if trial.process.poll() is None:
                    trial.process.send_signal(signal.SIGINT)
                return

    def _end(self, trial: _Trial) -> None:
        record, name = trial.record, f"trial-{trial.record['number']}"
        record["seconds"] += time.monotonic() - trial.started
        eval_file = trial.run_dir / EVAL_FILE
        ended_well = trial.process.returncode == 0 and eval_file.exists()
        if trial.pruning and not ended_well:
            record["status"] = "pruned"
            self.tpe.prune(record["optuna_trial"])
            self.console.print(f"{name} pruned at step {record['pruned_at']}")
        elif ended_well:
            self._finished(record, eval_file)
        elif trial.interrupts_sent:
            # still "running": the next sweep resumes it from its checkpoint
            self.console.print(f"{name} stopped; rerun the sweep to resume it")
        else:
            record["status"] = "failed"
            record["error"] = _tail(trial.stderr) or f"exit code {trial.process.returncode}"
            if self.tpe is not None:
                self.tpe.fail(record["optuna_trial"])
            self.console.print(f"[red]{name} failed[/red] (exit code "
                               f"{trial.process.returncode}); its log: {trial.stderr}")
        self.state.save()

    def _finished(self, record: dict[str, Any], eval_file: Path) -> None:
        name = f"trial-{record['number']}"
        try:
            record["objective"] = read_objective(eval_file, self.plan.objective)
        except LmforgeError as exc:
            # every trial would miss it: stop the sweep rather than train them all for nothing
            record["status"], record["error"] = "failed", str(exc)
            self.stop.reason = f"{exc}; stopped the sweep (the running trials checkpointed)"
            self.stop.count += 1
            if self.tpe is not None:
                self.tpe.fail(record["optuna_trial"])
            return
        record["status"] = "finished"
        if self.tpe is not None:
            self.tpe.finish(record["optuna_trial"], record["objective"])
        self.console.print(f"{name} finished in {record['seconds']:.1f} s: "
                           f"{self.plan.objective} {record['objective']:.4f}")


def _tail(path: Path) -> str:
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_sweep(config_path: str, options: SweepOptions, console: Console, registry: Registry
              ) -> dict[str, Any]:
    """Plan, run (or continue) and summarize a sweep; writes best.yaml; returns the summary."""
    from lmforge.plugins.sweep.report import summarize

    plan = make_plan(config_path, options, registry)
    default = "" if plan.settings.sampler else (
        " (the default: optuna is installed)" if plan.sampler == "tpe"
        else " (the default; pip install 'lmforge[tune]' for tpe)")
    console.print(f"sweep {plan.name}: sampler {plan.sampler}{default}, {plan.trials} trials, "
                  f"{plan.jobs} at a time, objective {plan.objective} ({plan.direction}) "
                  f"-> {plan.folder}", highlight=False)
    sweep = Sweep(plan, console)
    stopped = sweep.run()
    return summarize(plan, sweep.state, stopped, console)
