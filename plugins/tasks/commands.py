"""`lmforge predict` and `lmforge generate`: a trained run's labels, or its text, on demand; given
an exported bundle (a folder with lmforge.json), the torch-free runtime answers instead.

Both are standalone commands (lmforge.cli.main runs them before loading the plugin host) and
this module imports no torch: the run path loads what it needs when it runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.table import Table

from lmforge import LmforgeError, hookimpl
from lmforge.host.manager import load_plugins
from lmforge.host.registry import Registry
from lmforge.plugins.runtime.manifest import is_bundle
from lmforge.run.inputs import preprocess_for_inference, read_file_records, texts_as_records


def predict_texts(run_dir: str, registry: Registry, texts: tuple[str, ...] = (),
                  data_file: str | None = None,
                  batch_size: int = 64, stdin: TextIO | None = None) -> list[dict[str, Any]]:
    """Each input's text, predicted label and label probabilities (and its true label when a
    data file has one). Inputs: `texts`, the records of `data_file`, or the lines of `stdin`;
    they go through the run's text-rewriting preprocessors first, as in training."""
    from lmforge.run.pipeline import load_run

    loaded = load_run(Path(run_dir), registry, with_data=False)
    task = loaded.task
    if not task.predicts_labels:
        raise LmforgeError(f"{run_dir} holds a {loaded.config.components['task'].entry.name} "
                           f"model, which does not predict labels; use `lmforge generate`")
    if data_file is not None:
        records = read_file_records(loaded.config, Path(data_file), registry)
    else:
        lines = texts or tuple(line.rstrip("\n") for line in stdin or () if line.strip())
        records = preprocess_for_inference(loaded.config, texts_as_records(lines))
    if not records:
        raise LmforgeError("no text to classify: give --text, --file, or lines on standard input")
    predictions = task.predict(loaded.model, [r["text"] for r in records], batch_size)
    for record, prediction in zip(records, predictions, strict=True):
        prediction["text"] = record["text"]
        if record.get("label") is not None:
            prediction["true_label"] = str(record["label"])
    return predictions


def predictions_table(predictions: list[dict[str, Any]]) -> Table:
    """A row per text: the predicted label, its probability, and the true label if known."""
    table = Table(title_justify="left")
    table.add_column("text", overflow="fold", ratio=3)
    table.add_column("label")
    table.add_column("probability", justify="right")
    truth = any("true_label" in p for p in predictions)
    if truth:
        table.add_column("true label")
    for p in predictions:
        row = [p["text"], p["label"], f"{p['probabilities'][p['label']]:.4f}"]
        table.add_row(*row, *([p.get("true_label", "")] if truth else []))
    return table


@click.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--text", "texts", multiple=True,
              help="A text to classify (repeatable); without --text or --file, one text per "
                   "line of standard input.")
@click.option("--file", "data_file", type=click.Path(dir_okay=False),
              help="Classify every record of a data file (read with the run's source settings).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text.")
@click.pass_obj
def predict_command(host, run_dir: str, texts: tuple[str, ...], data_file: str | None,
                    batch_size: int, as_json: bool) -> None:
    """The label of each text, with every label's probability, from a trained classifier (a
    run folder, or a bundle that `lmforge export` wrote)."""
    stdin = None if texts or data_file else sys.stdin
    if is_bundle(run_dir):
        from lmforge.plugins.runtime.commands import predict_bundle

        predictions = predict_bundle(run_dir, texts, data_file, batch_size, stdin=stdin)
    else:
        predictions = predict_texts(run_dir, _registry(host), texts, data_file,
                                    batch_size, stdin=stdin)
    if as_json:
        for prediction in predictions:
            click.echo(json.dumps(prediction))
    else:
        Console().print(predictions_table(predictions))


@click.command("generate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--prompt", default="", help="Text to continue.")
@click.option("--max-new-tokens", type=int, default=200, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True,
              help="0 is greedy decoding.")
@click.option("--top-k", type=int, default=None, help="Sample among the k likeliest tokens.")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling threshold.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--stop", "stop_strings", multiple=True, help="Stop at this text (repeatable).")
@click.option("--seed", type=int, default=None, help="Seed for repeatable samples.")
@click.pass_obj
def generate_command(host, run_dir: str, prompt: str, max_new_tokens: int, temperature: float,
                     top_k: int | None, top_p: float | None, repetition_penalty: float,
                     stop_strings: tuple[str, ...], seed: int | None) -> None:
    """Continue a prompt with a trained language model (a run folder, or a bundle that
    `lmforge export` wrote), streaming the text as it comes."""
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
                    stop_strings=list(stop_strings))
    if is_bundle(run_dir):
        from lmforge.plugins.runtime.commands import generate_bundle

        pieces = generate_bundle(run_dir, prompt, **sampling)
    else:
        from lmforge.run.pipeline import load_run

        loaded = load_run(run_dir, _registry(host), with_data=False)
        if not loaded.task.generates_text:
            raise LmforgeError(f"{run_dir} holds a "
                               f"{loaded.config.components['task'].entry.name} model, which "
                               f"does not generate text; use `lmforge predict`")
        pieces = loaded.task.generate_text(loaded.model, prompt, **sampling)
    click.echo(prompt, nl=False)
    for piece in pieces:
        click.echo(piece, nl=False)
    click.echo()


def _registry(host) -> Registry:
    """The plugin host's registry, which a run folder needs (a bundle does not); loaded here
    when the command runs before the host (a standalone command, see lmforge.cli.main)."""
    if host is None:
        host = load_plugins()
        host.warn_failures()
    return host.registry


@hookimpl
def register_commands(cli):
    cli.add_command(predict_command)
    cli.add_command(generate_command)
