"""Builds the lmforge._C kernels extension from csrc/ (C++ always, CUDA when torch has it)."""

import glob
import os
import platform
import sys

from setuptools import setup


def extensions():
    if os.environ.get("LMFORGE_SKIP_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    # at::vec::Vectorized only emits SIMD code when CPU_CAPABILITY_* and the matching -m flags are
    # set; AVX2 runs on every x86-64 machine we build for (runtime AVX-512 dispatch is future work).
    simd = ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    x86 = platform.machine() in ("x86_64", "AMD64")
    # at::parallel_for is an inline `omp parallel` region: without -fopenmp it runs serially.
    openmp = ["-fopenmp"] if sys.platform == "linux" else []
    extra = {"cxx": ["-O3", "-std=c++17"] + (simd if x86 else []) + openmp}
    use_cuda = (bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
                and os.environ.get("LMFORGE_SKIP_CUDA_BUILD") != "1")
    if use_cuda:
        extra["nvcc"] = ["-O3"]
        ext = CUDAExtension("lmforge._C", sources + cuda_sources, extra_compile_args=extra,
                            extra_link_args=openmp)
    else:
        ext = CppExtension("lmforge._C", sources, extra_compile_args=extra,
                           extra_link_args=openmp)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
