"""What `lmforge doctor` reports: the Python, torch, CPU, kernels and plugins this machine has."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import lmforge
from lmforge.plugin_manager import PluginHost

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
             "neon", "asimd", "sve")


def cpu_features() -> list[str]:
    """The SIMD features the kernels care about, from /proc/cpuinfo where it exists."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    flags: set[str] = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
            break
    return [flag for flag in CPU_FLAGS if flag in flags]


def kernels_info() -> dict[str, Any]:
    """Whether a kernels module for this CPU is built, which, and what it was built with."""
    try:
        from lmforge import kernels
    except ImportError as exc:  # torch itself is missing
        return {"built": False, "error": str(exc)}
    module = kernels.load()
    if module is None:
        return {"built": False, "error": "no kernels module for this CPU is built"}
    from lmforge.ops import auto_backends

    return {"built": True, "module": module.__name__, **module.build_info(),
            "auto": auto_backends()}


def onnxruntime_info() -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError:
        return {"installed": False}
    return {"installed": True, "version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers()}


def torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        return {"installed": False, "error": str(exc)}
    return {"installed": True, "version": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.is_available(), "cuda_version": torch.version.cuda}


def diagnose(host: PluginHost) -> dict[str, Any]:
    return {
        "lmforge": lmforge.__version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_features": cpu_features(),
        "torch": torch_info(),
        "kernels": kernels_info(),
        "onnxruntime": onnxruntime_info(),
        "plugins": len(host.plugins),
        "failed_plugins": [failure.describe() for failure in host.failures],
    }
