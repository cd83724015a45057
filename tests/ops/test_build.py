"""setup.py's kernel build: which variants it compiles, and that a failed compile is not fatal."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.ops.cpu import wants_avx512

ROOT = Path(__file__).parents[2]
# the caller's build switches (CI sets some) must not leak into the builds under test
BUILD_SWITCHES = ("LMFORGE_SKIP_EXT", "LMFORGE_REQUIRE_EXT", "LMFORGE_BUILD_VARIANTS")


def build(folder: Path, **env: str) -> subprocess.CompletedProcess:
    """`setup.py build_ext --inplace` in a copy of the build files with the given sources."""
    environment = {k: v for k, v in os.environ.items() if k not in BUILD_SWITCHES}
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=folder,
                          capture_output=True, text=True, timeout=300,
                          env={**environment, "MAX_JOBS": "1", **env})


def build_folder(tmp_path: Path, source: str) -> Path:
    shutil.copy(ROOT / "setup.py", tmp_path)
    (tmp_path / "csrc").mkdir()
    shutil.copy(ROOT / "csrc/cpu.py", tmp_path / "csrc")
    (tmp_path / "csrc/kernel.cpp").write_text(source)
    (tmp_path / "lmforge").mkdir()  # where --inplace puts the modules
    return tmp_path


def built_modules(folder: Path) -> list[str]:
    return sorted(path.name.split(".")[0] for path in (folder / "lmforge").glob("_C*.so"))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="variants are x86's")
def test_a_local_build_compiles_the_variant_this_cpu_loads_and_all_builds_both(tmp_path):
    folder = build_folder(tmp_path, "int answer() { return 42; }\n")
    result = build(folder)
    assert result.returncode == 0, result.stderr
    assert built_modules(folder) == (["_C_avx512"] if wants_avx512() else ["_C"])
    result = build(folder, LMFORGE_BUILD_VARIANTS="all")
    assert result.returncode == 0, result.stderr
    assert built_modules(folder) == ["_C", "_C_avx512"]


def test_a_module_that_fails_to_compile_leaves_a_working_build(tmp_path):
    folder = build_folder(tmp_path, "this is not C++;\n")
    result = build(folder)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "was not built" in output and "reference ops" in output
    assert built_modules(folder) == []


def test_a_failed_compile_is_fatal_when_the_kernels_are_required(tmp_path):
    folder = build_folder(tmp_path, "this is not C++;\n")
    result = build(folder, LMFORGE_REQUIRE_EXT="1")
    assert result.returncode != 0
    assert "kernel.cpp" in result.stdout + result.stderr


def test_an_unknown_variant_is_refused_by_name(tmp_path):
    folder = build_folder(tmp_path, "int answer() { return 42; }\n")
    result = build(folder, LMFORGE_BUILD_VARIANTS="avx2,sse")
    assert result.returncode != 0
    assert "LMFORGE_BUILD_VARIANTS='avx2,sse'" in result.stderr
    assert built_modules(folder) == []
