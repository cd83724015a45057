"""The kernels layer: the module built for this CPU, and which backend (fused or reference) each op
runs on. The ops themselves live beside their C++: attention.py, lstm.py."""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import platform
import warnings
from types import ModuleType
from typing import Literal

import torch  # the kernels modules link against libtorch: it must be loaded first

from lmforge.errors import LmforgeError
from lmforge.ops.cpu import wants_avx512

# Both modules register the same `lmforge` torch ops, so a process loads exactly one of them.
AVX512_MODULE = "lmforge._C_avx512"
BASELINE_MODULE = "lmforge._C"

_load_errors: list[str] = []


@functools.cache
def load() -> ModuleType | None:
    """The kernels module for this CPU (importing it registers the torch ops), or None when
    none loads here; `load_error()` then says why."""
    if (platform.machine() in ("x86_64", "AMD64")
            and torch.backends.cpu.get_cpu_capability() == "DEFAULT"):
        _load_errors.append("this CPU lacks AVX2, which the baseline module is built for")
        return None
    names = [AVX512_MODULE, BASELINE_MODULE] if wants_avx512() else [BASELINE_MODULE]
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module is there; something it imports is not
                _load_errors.append(f"{name} does not load: {exc}")
            else:
                _load_errors.append(f"{name} is not built (its build failed or was skipped: "
                                    f"`pip install -v --no-build-isolation -e .` shows why)")
        except ImportError as exc:  # built, but not loadable: another torch's ABI, a bad build
            _load_errors.append(f"{name} does not load: {exc}")
    return None


def load_error() -> str | None:
    """Why no kernels module loaded (None when one did): not built, or built but failing to
    import, with the import error; a broken build is never mistaken for a missing one."""
    return None if load() is not None else "; ".join(_load_errors)


Backend = Literal["auto", "fused", "reference"]
BACKENDS = ("auto", "fused", "reference")
OPS = ("attention", "lstm", "lstm_step")

# The BLAS entry points each fused op calls, which the C++ declares weak so the module loads
# without them: the attention kernel multiplies its tiles with MKL's Fortran gemms, exported by
# PyTorch's x86 wheels. The LSTM's products go through ATen (cpublas::brgemm, at::mm), which
# libtorch links itself and which fall back to portable code: nothing to look up.
BLAS_SYMBOLS: dict[str, tuple[str, ...]] = {
    "attention": ("sgemm_", "dgemm_", "gemm_bf16bf16f32_"),
}

# Ops whose fused kernel has been measured faster than PyTorch's own op on CPU: `auto` picks a
# fused kernel only once it is listed here (a correct but slower kernel stays opt-in: `fused`).
# benchmarks/RESULTS.md has the figures: attention training and decoding beat SDPA; the LSTM's
# one-step op beats nn.LSTM at generation, while its whole-sequence training op does not yet.
PROMOTED: set[str] = {"attention", "lstm_step"}
# What `auto` resolves to when it takes a fused kernel: calls the kernel cannot serve (dropout,
# another device or dtype, ONNX tracing) go to PyTorch's op instead of failing as `fused` does.
AUTO_FUSED = "auto-fused"

_warned: set[str] = set()


def why_not_fused(op: str) -> str | None:
    """Why the fused `op` would not run here, as a phrase ("not available (...)", "missing the
    BLAS symbols ..."), or None when it will: a kernels module for this CPU is loaded, registers
    `op`, and the BLAS its kernel calls resolves. The one check behind `auto`, `fused`, doctor
    and the tests."""
    module = load()
    if module is None:
        return f"not available ({load_error()})"
    if not hasattr(torch.ops.lmforge, op):
        return f"not built ({module.__name__} has no {op} op)"
    # dlsym through the module's handle searches the libraries it links, where its weak symbols
    # resolve; a symbol found only elsewhere counts as missing, so `auto` errs on the safe side.
    library = ctypes.CDLL(module.__file__)
    missing = [symbol for symbol in BLAS_SYMBOLS.get(op, ()) if not hasattr(library, symbol)]
    if missing:
        return (f"missing the BLAS symbols {', '.join(missing)} (this torch exports no MKL: "
                f"{module.__name__} calls them)")
    return None


def is_fused(backend: str) -> bool:
    """Whether a resolved backend runs the fused kernel (asked for, or chosen by auto)."""
    return backend in ("fused", AUTO_FUSED)


def auto_backends() -> dict[str, str]:
    """What `kernels: auto` uses for each op here, and why (for `lmforge doctor`)."""
    summary = {}
    for op in OPS:
        reason = why_not_fused(op)
        if reason is not None:
            summary[op] = f"reference (fused kernel {reason})"
        elif op in PROMOTED:
            summary[op] = "fused (PyTorch's op for calls it cannot serve)"
        else:
            summary[op] = "reference (fused kernel built, opt-in with kernels: fused)"
    return summary


def resolve_backend(requested: Backend, op: str) -> str:
    """The backend for `op` ("attention", "lstm", "lstm_step"): LMFORGE_KERNELS overrides the
    setting.

    `fused` fails when the op's kernel would not run here (see why_not_fused); `reference` is
    PyTorch's own op; `auto` takes the fused kernel when it runs here and is promoted
    (AUTO_FUSED), and otherwise the reference, saying so once per op and process.
    """
    requested = os.environ.get("LMFORGE_KERNELS", requested)
    if requested not in BACKENDS:
        raise LmforgeError(f"LMFORGE_KERNELS / kernels: expected one of {', '.join(BACKENDS)}, "
                           f"found {requested!r}")
    if requested == "reference":
        return "reference"
    reason = why_not_fused(op)
    if requested == "fused":
        if reason is not None:
            raise LmforgeError(f"kernels: fused was asked for, but the fused {op} kernel is "
                               f"{reason} on this machine (see `lmforge doctor`); use "
                               f"kernels: auto")
        return "fused"
    if reason is None and op in PROMOTED:
        return AUTO_FUSED
    if op not in _warned:
        _warned.add(op)
        reason = reason or "not faster than PyTorch's yet"
        warnings.warn(f"lmforge: the fused {op} kernel is {reason}; using the PyTorch reference "
                      f"path", stacklevel=2)
    return "reference"
