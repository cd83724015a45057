"""The parity report for people: a table of the figures, and the failures in one message."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _worst(case: dict[str, Any]) -> tuple[float, float]:
    outputs = case["outputs"].values()
    return (max((o.get("max_abs", float("inf")) for o in outputs), default=0.0),
            max((o.get("max_rel", float("inf")) for o in outputs), default=0.0))


def _sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{name} {size}" for name, size in sizes.items())


def _tolerance(tolerance: dict[str, float]) -> str:
    if "share_of_max" in tolerance:
        return f"{tolerance['share_of_max']:g} of each output's largest magnitude"
    return f"{tolerance['abs']:g} abs or {tolerance['rel']:g} rel"


def parity_table(section: dict[str, Any], title: str) -> Table:
    """One row per graph and shape: the largest differences over its outputs."""
    table = Table(title=f"{title} (within {_tolerance(section['tolerance'])})",
                  title_justify="left")
    for column in ("graph", "shape", "max abs diff", "max rel diff", "ok"):
        table.add_column(column, justify="right" if "diff" in column else "left")
    for name, graph in section["graphs"].items():
        for case in graph["cases"]:
            worst_abs, worst_rel = _worst(case)
            table.add_row(name, _sizes(case["sizes"]), f"{worst_abs:.2e}", f"{worst_rel:.2e}",
                          "yes" if case["passed"] else "[red]NO[/red]")
    return table


def _greedy_line(greedy: dict[str, Any], what: str) -> str:
    count = len(greedy["torch"])
    if greedy["identical"]:
        verdict = f"{count} tokens identical"
    else:
        verdict = f"first {greedy['agreeing_prefix']} of {count} tokens identical"
    return (f"{what} greedy decoding against torch: {verdict} "
            f"({greedy['tokens_per_second']:,} tokens/s through onnxruntime)")


def print_report(console: Console, report: dict[str, Any]) -> None:
    console.print(parity_table(report, "parity with the run (onnxruntime against torch)"))
    if "greedy" in report:
        console.print(_greedy_line(report["greedy"], "fp32"))
    quantized = report.get("quantized")
    if quantized:
        console.print(parity_table(quantized, "int8 parity"))
        if "greedy" in quantized:
            console.print(_greedy_line(quantized["greedy"], "int8"))
        for graph, figures in quantized["speed"].items():
            console.print(f"int8 {graph}: {figures['int8_bytes'] / 1e6:.2f} MB against "
                          f"{figures['fp32_bytes'] / 1e6:.2f} MB, {figures['int8_ms']} ms per "
                          f"call against {figures['fp32_ms']} ms ({_sizes(figures['sizes'])})")


def failures(report: dict[str, Any]) -> list[str]:
    """Each check that failed, with its figures."""
    found = []
    sections = [("", report)] + ([("int8 ", report["quantized"])]
                                 if report.get("quantized") else [])
    for prefix, section in sections:
        allowed = _tolerance(section["tolerance"])
        for name, graph in section["graphs"].items():
            for case in graph["cases"]:
                for output, figures in case["outputs"].items():
                    if figures["passed"]:
                        continue
                    if "max_abs" not in figures:
                        found.append(f"{prefix}{name} at {_sizes(case['sizes'])}: {output} has "
                                     f"shape {figures['shape']}, torch {figures['expected']}")
                        continue
                    found.append(f"{prefix}{name} at {_sizes(case['sizes'])}: {output} max abs "
                                 f"diff {figures['max_abs']:.3e}, max rel diff "
                                 f"{figures['max_rel']:.3e}, {figures['outside']} values "
                                 f"outside {allowed}")
    greedy = report.get("greedy")
    if greedy is not None and not greedy["identical"]:
        at = greedy["agreeing_prefix"]
        found.append(f"greedy decoding differs from token {at} on: torch "
                     f"{greedy['torch'][at:at + 8]}, onnxruntime "
                     f"{greedy['onnxruntime'][at:at + 8]}")
    return found
