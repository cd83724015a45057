"""The end of `lmforge sweep`: the table of trials, best.yaml and the JSON summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from lmforge.atomic import atomic_write_text
from lmforge.plugins.sweep.state import SweepState
from lmforge.run.folder import CONFIG_FILE

BEST_FILE = "best.yaml"
# after the finished trials (best first): the ones that ended early, then those that broke
STATUS_ORDER = {"finished": 0, "pruned": 1, "running": 2, "failed": 3}


def ranked(trials: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    sign = 1 if direction == "minimize" else -1

    def key(trial: dict[str, Any]) -> tuple:
        objective = trial["objective"]
        return (STATUS_ORDER[trial["status"]],
                sign * objective if objective is not None else 0.0, trial["number"])

    return sorted(trials, key=key)


def trials_table(plan, trials: list[dict[str, Any]]) -> Table:
    table = Table(title=f"sweep {plan.name}: {plan.objective} ({plan.direction})")
    table.add_column("trial", justify="right")
    for param in plan.params:
        table.add_column(param.key, justify="right", overflow="fold")
    table.add_column(plan.objective, justify="right")
    table.add_column("status")
    table.add_column("time", justify="right")
    colours = {"finished": "green", "pruned": "yellow", "running": "cyan", "failed": "red"}
    for trial in trials:
        status = trial["status"]
        if status == "pruned":
            status += f" at step {trial.get('pruned_at')}"
        elif status == "running":
            status = "stopped (resumes)"
        objective = trial["objective"]
        table.add_row(str(trial["number"]),
                      *(_cell(trial["params"].get(p.key)) for p in plan.params),
                      "-" if objective is None else f"{objective:.4f}",
                      f"[{colours[trial['status']]}]{status}[/]",
                      f"{trial['seconds']:.1f} s")
    return table


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_best(plan, best: dict[str, Any]) -> Path:
    """The best trial's resolved config, named `<sweep>-best` in the original runs folder."""
    config = yaml.safe_load((Path(best["run_dir"]) / CONFIG_FILE).read_text(encoding="utf-8"))
    config["name"] = f"{plan.name}-best"
    config["runs_dir"] = str(plan.runs_dir)
    config.pop("sweep", None)  # a plain run config: running it must not start another search
    path = plan.folder / BEST_FILE
    header = (f"# the best trial of sweep {plan.name}: trial {best['number']}, "
              f"{plan.objective} {best['objective']:.6g}\n")
    atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def summarize(plan, state: SweepState, stopped: bool, console: Console) -> dict[str, Any]:
    """Print the table, write best.yaml when a trial finished, and return the summary."""
    trials = ranked(state.trials, plan.direction)
    console.print(trials_table(plan, trials))
    for trial in trials:
        if trial["status"] == "failed":
            console.print(f"trial {trial['number']} failed:\n{trial['error']}", markup=False,
                          highlight=False)
    finished = [t for t in trials if t["status"] == "finished"]
    best = None
    if finished:
        best_file = write_best(plan, finished[0])
        best = {**finished[0], "config": str(best_file)}
        console.print(f"best: trial {best['number']} ({plan.objective} "
                      f"{best['objective']:.4f}); its config: {best_file}  "
                      f"(lmforge run {best_file})", highlight=False)
    else:
        console.print("no trial has finished yet: no best.yaml")
    if stopped:
        console.print("stopped: rerun the same command to continue the sweep")
    return {"sweep": plan.name, "folder": str(plan.folder), "sampler": plan.sampler,
            "objective": plan.objective, "direction": plan.direction, "stopped": stopped,
            "best": best, "trials": trials}
