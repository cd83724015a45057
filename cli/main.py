"""The `lmforge` command line; plugins add subcommands through the `register_commands` hook."""

from __future__ import annotations

import json
import os
import sys
import warnings
from importlib.metadata import entry_points

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import lmforge
from lmforge.cli.plugin_admin import plugins_install, plugins_uninstall
from lmforge.cli.runs import runs
from lmforge.errors import LmforgeError, PluginError
from lmforge.host.manager import BUILTIN_DISTRIBUTION, PluginHost, load_plugins

# Commands lmforge's own distribution declares under this entry point group run before the
# plugin host is loaded, with no host (obj None), and load it themselves when they need it: so
# `lmforge generate BUNDLE` starts without importing every plugin, torch among them.
STANDALONE_GROUP = "lmforge.standalone_commands"

console = Console()
err_console = Console(stderr=True)

set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override a config value, e.g. --set data.split.val=0.1 (repeatable; YAML values).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lmforge.__version__, "--version", prog_name="lmforge")
def cli() -> None:
    """Train, evaluate, export and serve your own language models."""


@cli.group()
def plugins() -> None:
    """List, show, install and uninstall plugins and the components they provide."""


plugins.add_command(plugins_install)
plugins.add_command(plugins_uninstall)


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def plugins_list(host: PluginHost, as_json: bool) -> None:
    """Every plugin, built-in or installed, with its distribution, version and components."""
    from lmforge.cli.render import plugins_listing, plugins_table

    listing = plugins_listing(host)
    if as_json:
        click.echo(json.dumps(listing, indent=2))
    else:
        console.print(plugins_table(listing))


@plugins.command("show")
@click.argument("name")
@click.pass_obj
def plugins_show(host: PluginHost, name: str) -> None:
    """A component's docstring, settings (types and defaults) and the plugin that provides it."""
    from lmforge.cli.render import component_view

    registry = host.registry
    entries = registry.find(name)
    if not entries:
        names = ", ".join(sorted({e.name for e in registry.entries()}))
        raise LmforgeError(f"no component named {name!r}; components: {names}")
    for entry in entries:
        component_view(console, entry)


@cli.group()
def config() -> None:
    """Check and show configs."""


@config.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@set_option
@click.pass_obj
def config_validate(host: PluginHost, file: str, overrides: tuple[str, ...]) -> None:
    """Resolve every component and validate every setting, building nothing."""
    from lmforge.config import load_config

    resolved = load_config(file, host.registry, overrides)
    sections = ", ".join(resolved.to_dict())
    console.print(f"[green]ok[/green]: {file} is valid (run {resolved.name!r}; {sections})")


@config.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@set_option
@click.pass_obj
def config_show(host: PluginHost, file: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved config with every default filled in."""
    from lmforge.config import load_config

    click.echo(load_config(file, host.registry, overrides).to_yaml(), nl=False)


@cli.group()
def data() -> None:
    """The data stage."""


@data.command("prepare")
@click.argument("file", type=click.Path(dir_okay=False))
@set_option
@click.option("--force", is_flag=True, help="Prepare again even when a complete cache exists.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes to prepare with (default: data.workers, else 1); the prepared "
                   "files are the same whatever the number.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def data_prepare(host: PluginHost, file: str, overrides: tuple[str, ...], force: bool,
                 workers: int | None, as_json: bool) -> None:
    """Stream the corpus through cleaning, dedup and the split; print and save a data report."""
    from lmforge.cli.render import data_report_view
    from lmforge.config import load_config
    from lmforge.data.prepare import prepare_data

    resolved = load_config(file, host.registry, overrides)
    with Progress(TextColumn("preparing {task.description}"), BarColumn(),
                  TextColumn("{task.fields[records]:,} records, {task.fields[mb]:.1f} MB"),
                  TimeElapsedColumn(), console=err_console, transient=True,
                  disable=as_json) as progress:
        task = progress.add_task(resolved.name, total=None, records=0, mb=0.0)
        def report_progress(records: int, size: int) -> None:
            progress.update(task, records=records, mb=size / 1e6)

        prepared = prepare_data(resolved, force=force, workers=workers,
                                progress=report_progress)
    if as_json:
        click.echo(json.dumps(prepared.report, indent=2))
        return
    if prepared.cached:
        console.print(f"[cyan]cached[/cyan]: the data is unchanged; reusing {prepared.folder} "
                      f"(--force prepares again)")
    data_report_view(console, prepared.report)
    console.print(f"report: {prepared.folder / 'report.json'}")


@cli.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@set_option
@click.option("--resume", is_flag=True,
              help="Continue from the latest complete checkpoint of this run.")
@click.option("--nproc", type=click.IntRange(min=1),
              help="Train in this many processes of this machine, started by torchrun.")
@click.option("--max-restarts", type=click.IntRange(min=0),
              help="With --nproc: restart the processes this many times when one dies, each "
                   "time from the last checkpoint [default: 0].")
@click.pass_obj
def run_command(host: PluginHost, file: str, overrides: tuple[str, ...], resume: bool,
                nproc: int | None, max_restarts: int | None) -> None:
    """Data -> tokenizer -> train -> eval -> samples (-> export, with an `export:` section); stages
    whose output is valid are skipped. Under torchrun, each process runs it as one rank."""
    if nproc is not None or max_restarts is not None:
        from lmforge.cli.launch import launch

        args = ["run", file, *(f"--set={o}" for o in overrides), *(["--resume"] * resume)]
        sys.exit(launch(nproc or 1, max_restarts or 0, args))
    from lmforge.run.pipeline import run

    run(file, host.registry, overrides, resume=resume, console=console)


@cli.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["val", "test", "train"]), default="val",
              show_default=True, help="The prepared split to score.")
@click.option("--data", "data_file", type=click.Path(dir_okay=False),
              help="Score a file instead of a split: a text file for a language model; for a "
                   "classifier a labelled .csv/.tsv/.jsonl (optionally .gz) read with the run's "
                   "data-source settings.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def eval_command(host: PluginHost, run_dir: str, split: str, data_file: str | None, batch_size: int,
                 as_json: bool) -> None:
    """Score a trained run (loss, perplexity and bits per byte; or accuracy, precision, recall
    and F1), adding the figures to RUN/eval.json."""
    from lmforge.run.evaluate import evaluate_command

    results = evaluate_command(run_dir, host.registry, split=split, data_file=data_file,
                               batch_size=batch_size,
                               console=None if as_json else console)
    if as_json:
        click.echo(json.dumps(results, indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def doctor(host: PluginHost, as_json: bool) -> None:
    """Python, torch, threads, CPU features, kernels, onnxruntime and plugin health."""
    from lmforge.cli.doctor import diagnose
    from lmforge.cli.render import doctor_view

    findings = diagnose(host)
    if as_json:
        click.echo(json.dumps(findings, indent=2))
    else:
        doctor_view(console, findings)


cli.add_command(runs)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line for people, without the source location meant for developers."""
    return f"{message}\n"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors print one clear message and exit 2."""
    warnings.formatwarning = _one_line_warning
    args = sys.argv[1:] if argv is None else list(argv)
    standalone = _standalone_command(args)
    if standalone is not None:
        _invoke(standalone, args[1:], f"lmforge {args[0]}", obj=None)
        return
    try:
        host = load_plugins(cli=cli)
    except PluginError as exc:
        err_console.print(f"lmforge: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(3)
    host.warn_failures()
    _invoke(cli, args, "lmforge", obj=host)


def _standalone_command(args: list[str]):
    """The command `args` name when lmforge's own distribution declares it under
    STANDALONE_GROUP (and its plugin is not disabled); None otherwise."""
    if not args or args[0].startswith("-"):
        return None
    disabled = {name.strip() for name in os.environ.get("LMFORGE_DISABLE_PLUGINS", "").split(",")}
    for ep in entry_points(group=STANDALONE_GROUP, name=args[0]):
        if (ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION
                and not {ep.module, BUILTIN_DISTRIBUTION} & disabled):
            return ep.load()
    return None


def _invoke(command: click.Command, args: list[str], prog_name: str, obj) -> None:
    try:
        command.main(args=args, prog_name=prog_name, standalone_mode=False, obj=obj)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PluginError as exc:  # a standalone command that loaded the plugin host itself
        err_console.print(f"lmforge: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(3)
    except LmforgeError as exc:
        err_console.print(f"lmforge: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
