"""Which kernels module suits this CPU: read by the loader at run time and by setup.py at build
time (so a local build compiles only the module this machine loads), hence no lmforge imports."""

from __future__ import annotations

import os
from pathlib import Path

import torch

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


def wants_avx512() -> bool:
    """Whether the AVX-512 module suits this CPU: torch's own dispatch level says AVX-512 (it
    honours ATEN_CPU_CAPABILITY), and /proc/cpuinfo lists AVX-512 BF16, which that module is
    built with; LMFORGE_CPU_CAPABILITY=avx2 forces the baseline."""
    if os.environ.get("LMFORGE_CPU_CAPABILITY", "").lower() == "avx2":
        return False
    capability = torch.backends.cpu.get_cpu_capability()
    return capability.startswith("AVX512") and "avx512_bf16" in cpu_features()
