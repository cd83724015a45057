"""Backend resolution: one check, why_not_fused, decides what auto, fused and doctor use."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge import ops
from lmforge.cli.doctor import kernels_info
from lmforge.errors import LmforgeError


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("LMFORGE_KERNELS", raising=False)
    monkeypatch.setattr(ops, "_warned", set())


def test_a_missing_blas_symbol_turns_auto_to_the_reference_and_fused_to_an_error(monkeypatch):
    if ops.why_not_fused("attention") is not None:
        pytest.skip(f"the fused attention kernel is {ops.why_not_fused('attention')}")
    # A real lookup of a symbol no library exports, beside one this torch does export.
    monkeypatch.setitem(ops.BLAS_SYMBOLS, "attention", ("sgemm_", "lmforge_absent_gemm_"))
    reason = ops.why_not_fused("attention")
    assert reason is not None
    assert reason.startswith("missing the BLAS symbols lmforge_absent_gemm_ (")  # sgemm_ is there
    with pytest.warns(UserWarning, match="attention kernel is missing the BLAS symbols"):
        assert ops.resolve_backend("auto", "attention") == "reference"
    with pytest.raises(LmforgeError, match="fused attention kernel is missing the BLAS symbols "
                                           "lmforge_absent_gemm_"):
        ops.resolve_backend("fused", "attention")
    assert kernels_info()["auto"]["attention"] == f"reference (fused kernel {reason})"
    # the LSTM kernels call no such symbol: they are untouched
    assert ops.why_not_fused("lstm_step") is None
    assert ops.resolve_backend("auto", "lstm_step") == ops.AUTO_FUSED


def test_why_not_fused_is_what_auto_fused_and_doctor_consult(monkeypatch):
    asked = []

    def check(op):
        asked.append(op)
        return "simulated away" if op == "attention" else None

    monkeypatch.setattr(ops, "why_not_fused", check)
    with pytest.warns(UserWarning, match="attention kernel is simulated away"):
        assert ops.resolve_backend("auto", "attention") == "reference"
    with pytest.raises(LmforgeError, match="attention kernel is simulated away"):
        ops.resolve_backend("fused", "attention")
    # an op the check passes runs fused, whether or not a module is built here
    assert ops.resolve_backend("auto", "lstm_step") == ops.AUTO_FUSED
    assert ops.resolve_backend("fused", "lstm") == "fused"
    assert ops.resolve_backend("reference", "lstm") == "reference"  # reference asks nothing
    assert asked == ["attention", "attention", "lstm_step", "lstm"]
    assert ops.auto_backends() == {
        "attention": "reference (fused kernel simulated away)",
        "lstm": "reference (fused kernel built, opt-in with kernels: fused)",
        "lstm_step": "fused (PyTorch's op for calls it cannot serve)",
    }
    if ops.load() is not None:
        assert kernels_info()["auto"] == ops.auto_backends()


def test_an_unknown_backend_names_the_setting(monkeypatch):
    monkeypatch.setenv("LMFORGE_KERNELS", "fastest")
    with pytest.raises(LmforgeError, match="LMFORGE_KERNELS / kernels: .* found 'fastest'"):
        ops.resolve_backend("auto", "attention")


ROOT = Path(__file__).resolve().parents[2]
# A kernels module that is there but does not import, as after a build against another torch.
BROKEN_BUILD = """
import importlib.abc, sys
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith("lmforge._C"):
            raise ImportError(f"{name}: undefined symbol: _ZN2at4_ops5zeros4callE")
sys.meta_path.insert(0, Broken())
"""


def run_broken(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_SKIP_EXT"}
    return subprocess.run([sys.executable, "-c", BROKEN_BUILD + code], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_a_broken_build_is_reported_as_broken_not_as_missing():
    result = run_broken("from lmforge import ops\n"
                        "print(ops.load(), ops.load_error(), ops.why_not_fused('lstm'), "
                        "sep='\\n')")
    loaded, error, reason = result.stdout.splitlines()
    assert loaded == "None"
    assert "does not load" in error and "undefined symbol: _ZN2at4_ops5zeros4callE" in error
    assert reason == f"not available ({error})"


def test_a_broken_build_fails_the_test_suite():
    result = run_broken("import pytest\n"
                        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
                        "'tests/ops/test_backends.py::test_an_unknown_backend_names_the_setting']))")
    assert result.returncode == 1
    assert "the fused kernels do not run here" in result.stdout + result.stderr
    assert "undefined symbol" in result.stdout + result.stderr
