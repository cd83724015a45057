"""Data preparation throughput (MB/s of input) on Jane Austen's novels: exact and near dedup,
in one process and with two worker processes."""

from __future__ import annotations

import pytest

from lmforge.config import resolve
from lmforge.data.prepare import prepare_data
from lmforge.host.manager import load_plugins

CHAIN = [{"type": "normalize"}, {"type": "clean"}, {"type": "filter"}]

VARIANTS = {
    "exact-dedup": {"preprocess": [*CHAIN, {"type": "dedup"}],
                    "split": {"leakage_check": False}},
    "near-dedup": {"preprocess": [*CHAIN, {"type": "dedup", "near": True}],
                   "split": {"leakage_check": False}},
    "near-dedup-leakage-check": {"preprocess": [*CHAIN, {"type": "dedup", "near": True}],
                                 "split": {"leakage_check": True}},
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prepare_throughput(benchmark, variant, workers, austen, tmp_path):
    registry = load_plugins({"LMFORGE_LOAD_PLUGINS": ""}).registry
    raw = {"name": variant, "runs_dir": str(tmp_path),
           "data": {"source": {"type": "text", "paths": [str(austen)], "unit": "paragraph"},
                    **VARIANTS[variant], "workers": workers}}
    config = resolve(raw, registry)
    prepared = benchmark.pedantic(lambda: prepare_data(config, force=True), rounds=3,
                                  iterations=1, warmup_rounds=0)
    report = prepared.report
    megabytes = report["source"]["bytes"] / 1e6
    median = benchmark.stats.stats.median
    # The first round with workers in a process also starts the fork server they are forked from.
    first = benchmark.stats.stats.data[0]
    benchmark.extra_info.update({"MB": round(megabytes, 3), "MB/s": round(megabytes / median, 2),
                                 "records": report["source"]["records"], "workers": workers,
                                 "first round s": round(first, 3)})
    print(f"\n{variant}, {workers} worker(s): {megabytes:.2f} MB, "
          f"{report['source']['records']} records, median {median:.2f} s, "
          f"{megabytes / median:.2f} MB/s, first round {first:.2f} s")
