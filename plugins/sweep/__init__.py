"""`lmforge sweep`: hyperparameter search over runs, added to the CLI by `register_commands`."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from lmforge import hookimpl
from lmforge.cli import set_option
from lmforge.plugins.sweep.search import SweepOptions, run_sweep
from lmforge.plugins.sweep.space import SweepSettings


@click.command("sweep")
@click.argument("file", type=click.Path(dir_okay=False))
@set_option
@click.option("--param", "params", multiple=True, metavar="KEY.PATH=SPEC",
              help="A setting to search: loguniform(a,b), uniform(a,b), int(a,b[,log]) or "
                   "choice(x,y,...) (repeatable; adds to the config's sweep.params).")
@click.option("--trials", type=click.IntRange(min=1), help="Trials to run [default: 10, or "
                                                          "the whole grid].")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]),
              help="[default: tpe when optuna is installed, else random]")
@click.option("--seed", type=click.IntRange(min=0), help="The sampler's seed [default: 0].")
@click.option("--objective", metavar="SPLIT.METRIC",
              help="What to optimize, read from each trial's eval.json [default: val.loss].")
@click.option("--direction", type=click.Choice(["minimize", "maximize"]),
              help="[default: inferred from the metric]")
@click.option("--jobs", type=click.IntRange(min=1), help="Trials run at once [default: 1].")
@click.option("--nproc", type=click.IntRange(min=1),
              help="Processes per trial, started by torchrun [default: 1].")
@click.option("--grid-points", type=click.IntRange(min=2),
              help="Values per continuous range for the grid sampler.")
@click.option("--prune/--no-prune", default=None,
              help="tpe: stop trials doing worse than the median [default: prune].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def sweep_command(host, file: str, overrides: tuple[str, ...], params: tuple[str, ...],
                  as_json: bool, **choices) -> None:
    """Search hyperparameters: each trial a run in runs/NAME/trial-N; rerun to continue."""
    options = SweepOptions(params=params, overrides=overrides, **choices)
    console = Console(stderr=True) if as_json else Console()
    summary = run_sweep(file, options, console, host.registry)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    if summary["stopped"]:
        sys.exit(130)


@hookimpl
def register_config_sections(register):
    register("sweep", SweepSettings)


@hookimpl
def register_commands(cli):
    cli.add_command(sweep_command)
