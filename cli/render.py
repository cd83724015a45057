"""Terminal views (rich tables) of plugins, components, data reports and doctor findings."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from lmforge.host.manager import PluginHost
from lmforge.host.registry import Entry


def plugins_listing(host: PluginHost) -> dict[str, Any]:
    """The loaded plugins with their components, and the failed ones, as `plugins list --json`
    prints them."""
    return {
        "plugins": [{"name": p.name, "distribution": p.distribution, "version": p.version,
                     "builtin": p.builtin, "module": p.module,
                     "components": [{"kind": e.kind, "name": e.name}
                                    for e in host.registry.entries()
                                    if e.provider.plugin == p.name]}
                    for p in host.plugins],
        "failed": [{"name": f.name, "distribution": f.distribution, "version": f.version,
                    "entry_point": f.entry_point, "stage": f.stage, "error": f.error}
                   for f in host.failures],
    }


def plugins_table(listing: dict[str, Any], title: str = "lmforge plugins") -> Table:
    """A table of a `plugins_listing` (or of the part of one that some distributions provide)."""
    table = Table(title=title, title_justify="left")
    table.add_column("plugin", no_wrap=True)
    table.add_column("distribution", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("components", overflow="fold")
    for plugin in listing["plugins"]:
        components = [f"{c['kind']}:{c['name']}" for c in plugin["components"]]
        name = plugin["name"]
        label = f"{name} [dim](built-in)[/dim]" if plugin["builtin"] else name
        table.add_row(label, plugin["distribution"], plugin["version"],
                      ", ".join(components) or "-")
    for failure in listing["failed"]:
        table.add_row(f"[red]{failure['name']} (failed)[/red]", failure["distribution"],
                      failure["version"], f"[red]{failure['error']}[/red]")
    return table


def component_view(console: Console, entry: Entry) -> None:
    provider = entry.provider
    origin = "built-in" if provider.builtin else "installed plugin"
    console.print(f"[bold]{entry.name}[/bold] ({entry.kind.replace('_', ' ')}) from "
                  f"{provider.plugin} ({provider.distribution} {provider.version}, {origin})")
    if entry.doc:
        console.print(_reflow(entry.doc), markup=False)
    table = Table(title="settings", title_justify="left")
    for column in ("setting", "type", "default", "description"):
        table.add_column(column)
    for name, field in entry.settings.model_fields.items():
        default = "(required)" if field.is_required() else repr(field.get_default())
        table.add_row(name, _type_name(field.annotation), default, field.description or "")
    console.print(table)


def _reflow(doc: str) -> str:
    """Join the hard-wrapped lines of each prose paragraph so the terminal wraps them once."""
    paragraphs = []
    for paragraph in doc.split("\n\n"):
        lines = paragraph.splitlines()
        # indented or bulleted lines are layout (examples, lists): keep their breaks
        if any(line.startswith((" ", "-", "*")) for line in lines):
            paragraphs.append(paragraph)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def _counts(counts: dict[str, int]) -> str:
    return "\n".join(f"{reason} {count:,}" for reason, count in counts.items()) or "-"


def data_report_view(console: Console, report: dict[str, Any]) -> None:
    source = report["source"]
    steps = Table(title=f"data preparation: source {source['type']}", title_justify="left")
    steps.add_column("step", no_wrap=True)
    for column in ("records\nin", "records\nout", "chars\nin", "chars\nout"):
        steps.add_column(column, justify="right", no_wrap=True)
    steps.add_column("dropped", overflow="fold")
    steps.add_row("source", "", f"{source['records']:,}", "", f"{source['chars']:,}",
                  _counts(source["skipped"]))
    for step in report["steps"]:
        steps.add_row(step["step"], f"{step['records_in']:,}", f"{step['records_out']:,}",
                      f"{step['chars_in']:,}", f"{step['chars_out']:,}", _counts(step["dropped"]))
    console.print(steps)

    splits = Table(title="splits", title_justify="left")
    for column in ("split", "records", "chars", "share"):
        splits.add_column(column, justify="right" if column != "split" else "left")
    for name, figures in report["splits"].items():
        splits.add_row(name, f"{figures['records']:,}", f"{figures['chars']:,}",
                       f"{figures['share']:.1%}")
    console.print(splits)

    if report["labels"]:
        labels = Table(title="labels", title_justify="left")
        names = sorted({label for counts in report["labels"].values() for label in counts})
        labels.add_column("split")
        for name in names:
            labels.add_column(name, justify="right")
        for split, counts in report["labels"].items():
            labels.add_row(split, *(f"{counts.get(name, 0):,}" for name in names))
        console.print(labels)

    dups = report["duplicates"]
    console.print(f"duplicates removed: {dups['total']:,} ({dups['rate']:.2%} of records)")
    leakage = report["leakage"]
    if leakage.get("checked"):
        console.print(
            "leakage across splits: "
            f"val {leakage['val_exact_in_earlier_splits']} exact / {leakage['val_near_train']} "
            f"near train, test {leakage['test_exact_in_earlier_splits']} exact / "
            f"{leakage['test_near_train']} near train (Jaccard >= {leakage['near_threshold']})")
    workers = report.get("workers", 1)  # absent from a cached report: its run's count is unknown
    console.print(f"{source['bytes'] / 1e6:.2f} MB in {report['seconds']:.1f} s "
                  f"({report['mb_per_s'] or 0:.2f} MB/s"
                  f"{f', {workers} worker processes' if workers > 1 else ''})")


def doctor_view(console: Console, findings: dict[str, Any]) -> None:
    table = Table(title="lmforge doctor", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("found")
    torch = findings["torch"]
    kernels = findings["kernels"]
    ort = findings["onnxruntime"]
    rows = [
        ("lmforge", findings["lmforge"]),
        ("python", findings["python"]),
        ("platform", findings["platform"]),
        ("cpus", str(findings["cpus"])),
        ("cpu features", ", ".join(findings["cpu_features"]) or "unknown"),
        ("torch", f"{torch['version']}, {torch['threads']} threads, {torch['cpu_capability']}, "
                  f"cuda {'yes ' + str(torch['cuda_version']) if torch['cuda'] else 'no'}"
         if torch["installed"] else f"[red]not importable: {torch['error']}[/red]"),
        ("kernels", f"{kernels['module']}, simd {kernels['simd']}, torch {kernels['torch']}"
         if kernels["built"] else f"[yellow]not built ({kernels['error']}): the pure-PyTorch "
                                  f"reference is used[/yellow]"),
        ("onnxruntime", f"{ort['version']}, providers {', '.join(ort['providers'])}"
         if ort["installed"] else "not installed"),
        ("plugins", f"{findings['plugins']} loaded"),
    ]
    for op, backend in kernels.get("auto", {}).items():
        rows.append((f"kernels: auto, {op}", backend))
    for failure in findings["failed_plugins"]:
        rows.append(("[red]failed plugin[/red]", failure))
    for what, found in rows:
        table.add_row(what, found)
    console.print(table)
