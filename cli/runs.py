"""`lmforge runs list|clean`: what each run folder holds, and deleting what a run can spare."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from lmforge.atomic import remove_dir, stale_temporaries
from lmforge.config import read_yaml
from lmforge.errors import LmforgeError
from lmforge.run.checkpoint import (
    CHECKPOINTS,
    checkpoint_step,
    latest_checkpoint,
    read_meta,
    step_folders,
)
from lmforge.run.folder import (
    CONFIG_FILE,
    EVAL_FILE,
    TOKEN_CACHE_PREFIX,
    read_metrics,
    run_lock,
    running_pid,
)

console = Console()

FINISHED, INTERRUPTED, NOT_STARTED, RUNNING = "finished", "interrupted", "not started", "running"
STATE_STYLES = {FINISHED: "green", INTERRUPTED: "yellow", NOT_STARTED: "dim"}

dir_option = click.option(
    "--dir", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default="runs",
    show_default=True, help="The folder holding the run folders (a config's runs_dir).")


@dataclass
class RunSummary:
    """One run folder as `runs list` shows it; `errors` names the files that could not be read."""

    name: str
    bytes: int
    state: str = NOT_STARTED
    task: str | None = None
    model: str | None = None
    checkpoint_step: int | None = None  # the latest complete checkpoint's
    logged_step: int | None = None  # the last step metrics.jsonl records
    best_val_loss: float | None = None  # the lowest val_loss of the eval events
    val_accuracy: float | None = None  # eval.json's, for tasks that report accuracy
    errors: list[str] = field(default_factory=list)


@dataclass
class Listing:
    runs: list[RunSummary]
    not_runs: dict[str, int]  # folder name -> run folders directly inside it (a sweep's trials)


def disk_usage(path: Path) -> int:
    """Bytes of the files at or under `path`, links not followed."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue  # removed while we walked
    return total


def is_run_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / CONFIG_FILE).exists()


def summarize(run_dir: Path) -> RunSummary:
    """What a run folder holds. A file that cannot be read is named in `errors`, never raised:
    one broken run must not hide the others."""
    summary = RunSummary(run_dir.name, disk_usage(run_dir))
    for read in (_read_config, _read_progress, _read_eval):
        try:
            read(run_dir, summary)
        except (OSError, ValueError, LmforgeError) as exc:
            summary.errors.append(str(exc))
    return summary


def _read_config(run_dir: Path, summary: RunSummary) -> None:
    config, _ = read_yaml(run_dir / CONFIG_FILE)
    summary.task = _component_type(config, "task")
    summary.model = _component_type(config, "model")


def _component_type(config: dict[str, Any], section: str) -> str | None:
    component = config.get(section)
    return str(component["type"]) if isinstance(component, dict) and "type" in component else None


def _read_progress(run_dir: Path, summary: RunSummary) -> None:
    _read_checkpoints(run_dir, summary)
    if running_pid(run_dir) is not None:
        summary.state = RUNNING


def _read_checkpoints(run_dir: Path, summary: RunSummary) -> None:
    events = read_metrics(run_dir)
    steps = [e["step"] for e in events if isinstance(e.get("step"), int)]
    summary.logged_step = max(steps, default=None)
    losses = [e["val_loss"] for e in events
              if e.get("event") == "eval" and isinstance(e.get("val_loss"), (int, float))]
    summary.best_val_loss = min(losses, default=None)
    latest = latest_checkpoint(run_dir)
    if latest is None:
        summary.state = INTERRUPTED if events else NOT_STARTED
        return
    summary.checkpoint_step = checkpoint_step(latest)
    summary.state = INTERRUPTED
    meta = read_meta(latest)
    # A trainer marks the checkpoint it ends a run with as final; the pipeline reuses it.
    if isinstance(meta, dict) and meta.get("final") is True:
        summary.state = FINISHED


def _read_eval(run_dir: Path, summary: RunSummary) -> None:
    path = run_dir / EVAL_FILE
    if not path.exists():
        return
    figures = json.loads(path.read_text(encoding="utf-8"))
    val = figures.get("val") if isinstance(figures, dict) else None
    accuracy = val.get("accuracy") if isinstance(val, dict) else None
    if isinstance(accuracy, (int, float)):
        summary.val_accuracy = float(accuracy)


def scan(runs_dir: Path) -> Listing:
    """Every run folder in `runs_dir`, by name, and the other folders there."""
    if not runs_dir.is_dir():
        raise LmforgeError(f"no runs folder at {runs_dir}: `lmforge run` creates it (a config's "
                           f"runs_dir, default runs); give --dir to list another")
    listing = Listing([], {})
    for folder in sorted(runs_dir.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if is_run_folder(folder):
            listing.runs.append(summarize(folder))
        else:
            listing.not_runs[folder.name] = _runs_inside(folder)
    return listing


def _runs_inside(folder: Path) -> int:
    """Run folders directly inside `folder` (a sweep keeps its trials so)."""
    try:
        return sum(1 for inner in folder.iterdir() if is_run_folder(inner))
    except OSError:
        return 0


def run_folder(runs_dir: Path, name: str) -> Path:
    """The run folder `name` in `runs_dir`; a name that is a path, or not a run, is refused."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if name in ("", ".", "..") or any(sep in name for sep in separators):
        raise LmforgeError(f"run name {name!r}: expected the name of a folder in {runs_dir}, "
                           f"without path separators or '..' (give --dir for another runs "
                           f"folder); `lmforge runs list --dir {runs_dir}` shows the runs")
    run_dir = runs_dir / name
    if not is_run_folder(run_dir):
        raise LmforgeError(f"{run_dir} is not a run folder (it has no {CONFIG_FILE}): lmforge "
                           f"deletes files only from the folders `lmforge run` wrote; "
                           f"`lmforge runs list --dir {runs_dir}` shows them")
    return run_dir


def clean_targets(run_dir: Path) -> list[Path]:
    """What a run can spare: every checkpoint but the latest complete one (older ones and
    incomplete ones, which are never read), temporaries of writers that died, and the token
    caches, which are rebuilt when needed. Never the config, tokenizer, metrics, eval figures,
    best weights or prepared data that eval and --resume read."""
    latest = latest_checkpoint(run_dir)
    targets = [folder for _, folder in step_folders(run_dir) if folder != latest]
    data = run_dir / "data"
    for parent in (run_dir, run_dir / CHECKPOINTS, data):
        if parent.is_dir():
            targets.extend(stale_temporaries(parent))
    if data.is_dir():
        targets.extend(sorted(folder for folder in data.glob(f"{TOKEN_CACHE_PREFIX}*")
                              if folder.is_dir() and not folder.is_symlink()))
    return targets


def remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            remove_dir(path)  # its marker first: a deletion cut short leaves it incomplete
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise LmforgeError(f"could not remove {path}: {exc}") from exc


def say(text: str) -> None:
    """A plain line: paths and names are never read as rich markup, nor broken across lines."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@click.group()
def runs() -> None:
    """List the run folders and free the space they can spare."""


@runs.command("list")
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def runs_list(runs_dir: Path, as_json: bool) -> None:
    """Every run in DIR: task, model, steps, best validation figure, size and state."""
    listing = scan(runs_dir)
    if as_json:
        click.echo(json.dumps({"runs_dir": str(runs_dir),
                               "runs": [dataclasses.asdict(r) for r in listing.runs],
                               "not_runs": [{"name": name, "runs_inside": inside}
                                            for name, inside in listing.not_runs.items()]},
                              indent=2))
        return
    if listing.runs:
        console.print(runs_table(runs_dir, listing.runs))
    else:
        say(f"no runs in {runs_dir}")
    for run in listing.runs:
        for error in run.errors:
            console.print(f"[red]{escape(run.name)}[/red]: {escape(error)}", highlight=False,
                          soft_wrap=True)
    if listing.not_runs:
        names = ", ".join(listing.not_runs)
        console.print(f"[dim]skipped {len(listing.not_runs)} folder(s) that are not runs (no "
                      f"{CONFIG_FILE}): {escape(names)}[/dim]", highlight=False, soft_wrap=True)
    for name, inside in listing.not_runs.items():
        if inside:
            say(f"{name} holds {inside} run(s): lmforge runs list --dir {runs_dir / name}")


def runs_table(runs_dir: Path, summaries: list[RunSummary]) -> Table:
    with_accuracy = any(r.val_accuracy is not None for r in summaries)
    table = Table(title=f"runs in {runs_dir}", title_justify="left")
    table.add_column("run", no_wrap=True)
    table.add_column("task")
    table.add_column("model")
    table.add_column("steps", justify="right")
    table.add_column("best val loss", justify="right")
    if with_accuracy:
        table.add_column("val accuracy", justify="right")
    table.add_column("size", justify="right")
    table.add_column("state")
    for run in summaries:
        unknown = "[red]?[/red]" if run.errors else "-"
        row = [escape(run.name), escape(run.task or "") or unknown,
               escape(run.model or "") or unknown, _steps(run),
               "-" if run.best_val_loss is None else f"{run.best_val_loss:.4f}"]
        if with_accuracy:
            row.append("-" if run.val_accuracy is None else f"{run.val_accuracy:.1%}")
        style = STATE_STYLES[run.state]
        row += [decimal(run.bytes), f"[{style}]{run.state}[/{style}]"]
        table.add_row(*row)
    total = sum(r.bytes for r in summaries)
    table.caption = f"{len(summaries)} run(s), {decimal(total)}"
    table.caption_justify = "left"
    return table


def _steps(run: RunSummary) -> str:
    """The latest checkpoint's step, and the last logged one when training went past it."""
    if run.checkpoint_step is None:
        return "-" if not run.logged_step else f"(logged {run.logged_step:,})"
    text = f"{run.checkpoint_step:,}"
    if run.logged_step is not None and run.logged_step > run.checkpoint_step:
        text += f" (logged {run.logged_step:,})"
    return text


@runs.command("clean")
@click.argument("name")
@dir_option
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
def runs_clean(name: str, runs_dir: Path, dry_run: bool) -> None:
    """Delete what run NAME can spare: checkpoints but the latest complete one, leftovers of
    interrupted writes, and token caches. `lmforge eval` and `--resume` still work after it."""
    run_dir = run_folder(runs_dir, name)
    if dry_run:
        _clean(run_dir, dry_run)
        return
    with run_lock(run_dir):  # refused while a run trains here; no run starts meanwhile
        _clean(run_dir, dry_run)


def _clean(run_dir: Path, dry_run: bool) -> None:
    targets = clean_targets(run_dir)
    verb = "would remove" if dry_run else "removed"
    freed = 0
    for path in targets:
        size = disk_usage(path)
        if not dry_run:
            remove(path)
        freed += size
        say(f"{verb} {path.relative_to(run_dir)} ({decimal(size)})")
    latest = latest_checkpoint(run_dir)
    kept = (f"; kept the latest complete checkpoint, {latest.name}" if latest is not None
            else "; the run has no complete checkpoint")
    if not targets:
        say(f"nothing to clean in {run_dir}{kept}")
        return
    say(f"{'would free' if dry_run else 'freed'} {decimal(freed)} in {run_dir}{kept}")
