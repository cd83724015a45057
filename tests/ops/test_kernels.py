"""The kernels module is chosen per CPU: AVX-512 where it runs, the AVX2 baseline otherwise."""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge import ops

if ops.load() is None:
    pytest.skip("no kernels module is built here", allow_module_level=True)

# Attention (tiled and decoding) and LSTM through whichever module the environment selects,
# on fixed inputs.
PROBE = """
import json, torch
from lmforge import ops
from lmforge.ops.attention import fused_attention
from lmforge.ops.lstm import fused_lstm
module = ops.load()
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, 3, 37, 24, generator=g) for _ in range(3))
out = fused_attention(q, k, v, causal=True)
decode = fused_attention(q[:, :, -1:], k, v, causal=True)
x = torch.randn(3, 9, 20, generator=g)
weights = (torch.randn(4 * 16, 20, generator=g) * 0.2, torch.randn(4 * 16, 16, generator=g) * 0.2,
           torch.zeros(4 * 16), torch.zeros(4 * 16))
h = fused_lstm(x, None, [weights])[0]
print(json.dumps({"module": module.__name__, "attention": out.flatten().tolist(),
                  "decode": decode.flatten().tolist(), "lstm": h.flatten().tolist()}))
"""


def probe(**env: str) -> dict:
    import os

    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def cpu_flags() -> set[str]:
    """The CPU's flags read here, apart from the code under test."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {flag for line in text.splitlines() if line.startswith("flags")
            for flag in line.partition(":")[2].split()}


def test_the_module_matches_what_the_cpu_supports():
    module = ops.load()
    avx512 = ("avx512_bf16" in cpu_flags()
              and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))
    if platform.machine() not in ("x86_64", "AMD64"):
        expected = (ops.BASELINE_MODULE, "default")
    else:
        expected = (ops.AVX512_MODULE, "avx512") if avx512 else (ops.BASELINE_MODULE, "avx2")
    assert (module.__name__, module.build_info()["simd"]) == expected


def test_the_avx2_baseline_can_be_forced_and_agrees():
    if ops.load().__name__ != ops.AVX512_MODULE:
        pytest.skip("this machine runs the baseline already")
    if importlib.util.find_spec(ops.BASELINE_MODULE) is None:
        pytest.skip("the baseline module is not built here (LMFORGE_BUILD_VARIANTS=all builds it)")
    if ops.why_not_fused("attention") is not None:
        pytest.skip(f"the fused attention kernel is {ops.why_not_fused('attention')}")
    chosen, forced = probe(), probe(LMFORGE_CPU_CAPABILITY="avx2")
    assert (chosen["module"], forced["module"]) == (ops.AVX512_MODULE,
                                                    ops.BASELINE_MODULE)
    for op in ("attention", "decode", "lstm"):
        torch.testing.assert_close(torch.tensor(forced[op]), torch.tensor(chosen[op]),
                                   rtol=1e-5, atol=1e-5)
