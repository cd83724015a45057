"""Loads the kernels module built for this CPU: the AVX-512 one where it runs, else AVX2."""

from __future__ import annotations

import functools
import importlib
import os
import platform
from pathlib import Path
from types import ModuleType

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


# Both modules register the same `lmforge` torch ops, so a process loads exactly one of them.
AVX512_MODULE = "lmforge._C_avx512"
BASELINE_MODULE = "lmforge._C"


def wants_avx512() -> bool:
    """Whether the AVX-512 module suits this CPU: torch's own dispatch level says AVX-512 (it
    honours ATEN_CPU_CAPABILITY), and /proc/cpuinfo lists AVX-512 BF16, which that module is
    built with; LMFORGE_CPU_CAPABILITY=avx2 forces the baseline."""
    if os.environ.get("LMFORGE_CPU_CAPABILITY", "").lower() == "avx2":
        return False
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return capability.startswith("AVX512") and "avx512_bf16" in cpu_features()


@functools.cache
def load() -> ModuleType | None:
    """The kernels module for this CPU (importing it registers the torch ops), or None when
    no module is built."""
    import torch  # the modules link against libtorch: it must be loaded first

    if (platform.machine() in ("x86_64", "AMD64")
            and torch.backends.cpu.get_cpu_capability() == "DEFAULT"):
        return None  # the x86 baseline is built for AVX2: it would fault on this CPU
    names = [AVX512_MODULE, BASELINE_MODULE] if wants_avx512() else [BASELINE_MODULE]
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None
