"""What `lmforge doctor` reports: the Python, torch, CPU, kernels and plugins this machine has."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import lmforge
from lmforge.host.manager import PluginHost
from lmforge.ops import auto_backends, load, load_error
from lmforge.ops.cpu import cpu_features


def kernels_info() -> dict[str, Any]:
    """Whether a kernels module for this CPU is built, which, and what it was built with."""
    module = load()
    if module is None:
        return {"built": False, "error": load_error()}
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
