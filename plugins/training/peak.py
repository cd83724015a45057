"""Peak matmul FLOP/s of this machine (the MFU denominator), probed once and cached, and the
run summary that reports MFU against it."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.atomic import atomic_write_text

DTYPES = {"float32": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
CPU_SIZE = 2048  # 17 GFLOP a product: about 0.1 s at 185 GFLOP/s (fp32, 2 threads)
CUDA_SIZE = 8192  # big enough for a data-centre GPU to reach its matmul ceiling
PROBE_BUDGET_S = 0.6


def cache_path() -> Path:
    folder = os.environ.get("LMFORGE_CACHE_DIR") or Path.home() / ".cache" / "lmforge"
    return Path(folder) / "peak.json"


def _processor_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_key(dtype: str, device: str) -> str:
    threads = torch.get_num_threads() if device == "cpu" else "-"
    return (f"{_processor_name(device)} | torch {torch.__version__} | threads {threads} | "
            f"{dtype} | {device}")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_peak(dtype: str = "float32", device: str = "cpu") -> float:
    """Best FLOP/s of square `torch.mm` products after a warmup, within about a second."""
    n = CUDA_SIZE if device == "cuda" else CPU_SIZE
    a = torch.randn(n, n, device=device, dtype=DTYPES[dtype],
                    generator=torch.Generator(device).manual_seed(0))
    b = a.clone()
    torch.mm(a, b)  # warmup: thread pool, allocator, kernel selection
    _sync(device)
    best = float("inf")
    started = time.perf_counter()
    # The best of a few runs: the ceiling is what the machine can do, noise only slows it down.
    for _ in range(5):
        begin = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - begin)
        if time.perf_counter() - started > PROBE_BUDGET_S:
            break
    return 2 * n**3 / best


def peak_flops(dtype: str = "float32", device: str = "cpu") -> tuple[float, bool]:
    """(FLOP/s, freshly measured) for `dtype` on `device` at the current thread count.

    Measured on first use and cached in LMFORGE_CACHE_DIR (default ~/.cache/lmforge)/peak.json,
    keyed by processor, torch version, thread count, dtype and device.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, found {dtype!r}")
    dtype = str(DTYPES[dtype]).removeprefix("torch.")
    path = cache_path()
    key = _cache_key(dtype, device)
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), (int, float)):
        return float(cache[key]), False
    value = measure_peak(dtype, device)
    cache = {**(cache if isinstance(cache, dict) else {}), key: value}
    with contextlib.suppress(OSError):  # a read-only home only costs a probe per run
        atomic_write_text(path, json.dumps(cache, indent=2, sort_keys=True) + "\n")
    return value, True


def summary_text(summary: dict[str, Any], precision: str, device_type: str) -> str:
    """The lines a run ends with: steps, speed, losses, MFU against the probed peak and the
    checkpoint."""
    lines = [f"stopped at step {summary['steps']} ({summary['stopped']}) after "
             f"{summary['train_seconds']:.1f} s of training: {summary['tokens']:,} tokens, "
             f"{summary['tokens_per_s']:,.0f} tokens/s"]
    losses = [f"{name} {summary[key]:.4f}" for name, key in
              (("train loss", "final_train_loss"), ("val loss", "final_val_loss"),
               ("best val loss", "best_val_loss")) if summary[key] is not None]
    if losses:
        lines.append(", ".join(losses))
    if summary["mfu"] is not None:
        lines.append(f"MFU {summary['mfu']:.1%} against a measured matmul peak of "
                     f"{summary['peak_flops'] / 1e9:.1f} GFLOP/s (probe, {precision}, "
                     f"{device_type})")
    lines.append(f"checkpoint: {summary['checkpoint']}")
    if summary["interrupted"]:
        lines.append("interrupted: resume with --resume")
    return "\n".join(lines)
