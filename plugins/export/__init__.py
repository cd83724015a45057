"""`lmforge export` and the built-in `onnx` exporter, added through the plugin hooks.

The exporter's modules import torch.onnx and onnxruntime (the `onnx` extra) only when an export
runs, so lmforge works without the extra until then.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml
from rich.console import Console

from lmforge import hookimpl
from lmforge.errors import LmforgeError
from lmforge.host.registry import Registry
from lmforge.interfaces.export import Exporter, ExporterSettings
from lmforge.run.folder import CONFIG_FILE, EXPORT_DIR

DEFAULT_EXPORTER = "onnx"


class OnnxExporter(Exporter):
    """Exports a run to an ONNX bundle for onnxruntime, and proves it matches the run.

    The bundle folder holds model.onnx (the full-sequence forward, dynamic batch and sequence),
    for language models decode.onnx (one generation step, the KV cache or recurrent state as
    inputs and outputs), the tokenizer, parity.json and the manifest lmforge.json (task,
    labels, preprocessing, generation defaults, limits, SHA-256 of every file, versions).
    Graphs are traced from the PyTorch reference ops at ONNX opset 18. Parity: onnxruntime
    against torch at three shapes other than the traced one, every output within 1e-4 absolute
    or 1e-3 relative, and for language models 32 greedily decoded tokens, identical. A bundle
    that fails is not written (the previous one stays); its report goes beside it, as
    BUNDLE.parity-failed.json. `quantize: int8` adds int8 copies with their own figures.
    Needs the `onnx` extra (onnx, onnxruntime, onnxscript).
    """

    Settings = ExporterSettings

    def export(self, run_dir, out_dir, *, registry, console=None, force=False):
        try:
            from lmforge.plugins.export.onnx_exporter import export_bundle
        except ImportError as exc:
            raise LmforgeError(f"the onnx exporter needs the `onnx` extra ({exc}): pip install "
                               f"'lmforge[onnx]'") from None
        return export_bundle(self.settings, Path(run_dir), Path(out_dir), registry=registry,
                             console=console, force=force)


def exporter_for(run_dir: Path, registry: Registry, name: str | None,
                 quantize: str | None) -> Exporter:
    """The exporter `name` (default: the one the run's config names, else onnx), with the
    settings of the config's `export:` section when it names the same one, `quantize` given on
    the command line taking precedence."""
    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise LmforgeError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); give the folder "
                           f"`lmforge run` wrote, e.g. runs/NAME")
    section = (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}).get("export")
    section = section if isinstance(section, dict) else {}
    name = name or section.get("type") or DEFAULT_EXPORTER
    entry = registry.get("exporter", name)
    settings = {k: v for k, v in section.items() if k != "type"} if section.get("type") == name \
        else {}
    if quantize is not None:
        settings["quantize"] = quantize
    return entry.create(settings)


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help=f"The bundle folder [default: RUN/{EXPORT_DIR}].")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Also write int8 copies of the graphs, with their own parity figures.")
@click.option("--exporter", "name", metavar="NAME",
              help=f"A registered exporter [default: the run config's, else {DEFAULT_EXPORTER}].")
@click.option("--force", is_flag=True, help="Export again even when the bundle is up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print the parity report as JSON.")
@click.pass_obj
def export_command(host, run_dir: str, out_dir: str | None, quantize: str | None,
                   name: str | None, force: bool, as_json: bool) -> None:
    """Export a trained run to a deployable bundle and check it against the run (parity)."""
    run = Path(run_dir)
    exporter = exporter_for(run, host.registry, name, quantize)
    console = Console(stderr=True) if as_json else Console()
    report = exporter.export(run, Path(out_dir) if out_dir else run / EXPORT_DIR,
                             registry=host.registry, console=console, force=force)
    if as_json:
        click.echo(json.dumps(report, indent=2))


@hookimpl
def register_exporters(register):
    register("onnx", OnnxExporter)


@hookimpl
def register_commands(cli):
    cli.add_command(export_command)
