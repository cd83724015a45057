"""Builds the lmforge._C kernels extension from csrc/ (C++ always, CUDA when torch has it)."""

import glob
import os

from setuptools import setup


def extensions():
    if os.environ.get("LMFORGE_SKIP_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    extra = {"cxx": ["-O3", "-std=c++17"]}
    use_cuda = (bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
                and os.environ.get("LMFORGE_SKIP_CUDA_BUILD") != "1")
    if use_cuda:
        extra["nvcc"] = ["-O3"]
        ext = CUDAExtension("lmforge._C", sources + cuda_sources, extra_compile_args=extra)
    else:
        ext = CppExtension("lmforge._C", sources, extra_compile_args=extra)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
