"""The kernels module is chosen per CPU: AVX-512 where it runs, the AVX2 baseline otherwise."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_the_module_matches_what_the_cpu_supports():
    module = ops.load()
    simd = module.build_info()["simd"]
    if ops.wants_avx512() and module.__name__ == ops.AVX512_MODULE:
        assert simd == "avx512"
    else:  # no AVX-512 BF16 here, or a build without the AVX-512 module (non-x86)
        assert module.__name__ == ops.BASELINE_MODULE and simd in ("avx2", "default")


def test_the_avx2_baseline_can_be_forced_and_agrees():
    if ops.load().__name__ != ops.AVX512_MODULE:
        pytest.skip("this machine runs the baseline already")
    if ops.why_not_fused("attention") is not None:
        pytest.skip(f"the fused attention kernel is {ops.why_not_fused('attention')}")
    chosen, forced = probe(), probe(LMFORGE_CPU_CAPABILITY="avx2")
    assert (chosen["module"], forced["module"]) == (ops.AVX512_MODULE,
                                                    ops.BASELINE_MODULE)
    for op in ("attention", "decode", "lstm"):
        torch.testing.assert_close(torch.tensor(forced[op]), torch.tensor(chosen[op]),
                                   rtol=1e-5, atol=1e-5)
