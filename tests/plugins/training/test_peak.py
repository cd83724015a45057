"""The matmul peak probe: measured once, then read from the cache."""

import itertools
import json

import pytest

from lmforge.plugins.training import peak
from lmforge.plugins.training.peak import peak_flops


def test_the_peak_is_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    # a clock that ticks 0.1 s per reading: each product "takes" 0.1 s, whatever the machine
    ticks = itertools.count()
    monkeypatch.setattr(peak.time, "perf_counter", lambda: next(ticks) * 0.1)
    first, measured = peak_flops("float32")
    assert measured and first == pytest.approx(2 * peak.CPU_SIZE**3 / 0.1)
    again, measured_again = peak_flops("fp32")
    assert not measured_again and again == first
    (key,) = json.loads((tmp_path / "peak.json").read_text())
    assert "float32" in key and "threads" in key and "torch" in key


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype: expected one of .* found 'int8'"):
        peak_flops("int8")
