"""Builds the lmforge kernels from csrc/: on x86 an AVX2 and an AVX-512 module exist (one is loaded
at run time, by what the CPU supports); a local build compiles only the one this CPU loads,
LMFORGE_BUILD_VARIANTS=all builds both (for wheels). CUDA sources join when torch has CUDA."""

import glob
import importlib.util
import os
import platform
import sys

from setuptools import setup

# at::vec::Vectorized only emits SIMD code when CPU_CAPABILITY_* and the matching -m flags are
# set; without them it silently runs scalar code (measured 27x slower than ATen here).
SIMD_FLAGS = {
    "avx2": ("lmforge._C", ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2",
                            "-DCPU_CAPABILITY_AVX2"]),
    "avx512": ("lmforge._C_avx512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                                     "-mavx512bf16", "-mfma", "-mf16c",
                                     "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]),
}


def native_variant() -> str:
    """The variant the loader picks on this machine (csrc/cpu.py, read without importing lmforge,
    which is not installed yet)."""
    spec = importlib.util.spec_from_file_location("lmforge_cpu", "csrc/cpu.py")
    cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu)
    return "avx512" if cpu.wants_avx512() else "avx2"


def variants() -> list[str]:
    """LMFORGE_BUILD_VARIANTS: `native` (the default), `all`, or a comma list of avx2, avx512."""
    asked = os.environ.get("LMFORGE_BUILD_VARIANTS", "native").strip().lower()
    if asked == "native":
        return [native_variant()]
    if asked == "all":
        return list(SIMD_FLAGS)
    chosen = [name.strip() for name in asked.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SIMD_FLAGS]
    if unknown or not chosen:
        sys.exit(f"LMFORGE_BUILD_VARIANTS={asked!r}: expected native, all, or a comma list of "
                 f"{', '.join(SIMD_FLAGS)}")
    return chosen


def extensions():
    if os.environ.get("LMFORGE_SKIP_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    class VariantBuild(BuildExtension.with_options(use_ninja=True)):
        """Compiles each module in a build folder of its own (the variants share sources but not
        flags, and would otherwise overwrite each other's objects). A module that fails to
        compile is reported and left out: the install still works, on the reference ops, and
        `lmforge doctor` says the module is not built."""

        def build_extension(self, ext):
            shared_temp = self.build_temp
            self.build_temp = os.path.join(shared_temp, ext.name)
            try:
                super().build_extension(ext)
            except Exception as exc:  # ninja and the compiler fail with assorted types
                if not ext.optional:
                    raise
                self.warn(f"{ext.name} was not built ({exc}); lmforge will run the reference "
                          f"ops. Set LMFORGE_REQUIRE_EXT=1 to make this failure fatal.")
            finally:
                self.build_temp = shared_temp

    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    x86 = platform.machine() in ("x86_64", "AMD64")
    # at::parallel_for is an inline `omp parallel` region: without -fopenmp it runs serially.
    openmp = ["-fopenmp"] if sys.platform == "linux" else []
    use_cuda = (bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
                and os.environ.get("LMFORGE_SKIP_CUDA_BUILD") != "1")
    builds = [SIMD_FLAGS[name] for name in variants()] if x86 else [("lmforge._C", [])]
    # optional: setuptools then skips a module that did not build instead of failing to copy it.
    optional = os.environ.get("LMFORGE_REQUIRE_EXT") != "1"
    modules = []
    for name, simd in builds:
        # C++20: torch's headers use it (bit-field initializers); c++17 builds with warnings.
        # -g0: Python's own flags ask for debug info, which doubled attention.cpp's compile time.
        extra = {"cxx": ["-O3", "-g0", "-std=c++20"] + simd + openmp}
        if use_cuda:
            extra["nvcc"] = ["-O3"]
            modules.append(CUDAExtension(name, sources + cuda_sources, extra_compile_args=extra,
                                         extra_link_args=openmp, optional=optional))
        else:
            modules.append(CppExtension(name, sources, extra_compile_args=extra,
                                        extra_link_args=openmp, optional=optional))
    return modules, {"build_ext": VariantBuild}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
