"""Shared fixtures: tests never autoload third-party plugins unless the test is about that."""

import functools
import os
import tempfile
from pathlib import Path

import pytest

from lmforge.host.manager import load_plugins

os.environ["LMFORGE_LOAD_PLUGINS"] = ""
os.environ.pop("LMFORGE_DISABLE_PLUGINS", None)
os.environ.pop("LMFORGE_STRICT_PLUGINS", None)
# the measured matmul peak is cached per machine; tests must not write the user's cache
os.environ["LMFORGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmforge-test-cache-")
os.environ["LMFORGE_NO_PROGRESS"] = "1"

# the corpora the shipped examples read: in the project, so no test skips for want of them
EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
# `make install` builds the kernels; an install with LMFORGE_SKIP_EXT=1 (a machine that cannot
# build them) is tested without. Otherwise a kernel that does not run fails the suite at once:
# a broken build or another torch's ABI must not pass as skipped tests.
KERNELS_EXPECTED = os.environ.get("LMFORGE_SKIP_EXT") != "1"


def pytest_sessionstart(session):
    if not KERNELS_EXPECTED:
        return
    from lmforge import ops

    broken = {op: reason for op in ops.OPS if (reason := ops.why_not_fused(op)) is not None}
    if broken:
        pytest.exit(f"the fused kernels do not run here: {broken}. Rebuild them (make install), "
                    f"or set LMFORGE_SKIP_EXT=1 to test without them", returncode=1)


@functools.cache
def builtin_registry():
    """The registry of the built-in plugins only, loaded once (it is never changed)."""
    return load_plugins({"LMFORGE_LOAD_PLUGINS": ""}).registry


@pytest.fixture
def registry():
    """The registry of the built-in plugins only."""
    return builtin_registry()
