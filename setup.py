"""Builds the lmforge kernels from csrc/: an AVX2 and an AVX-512 module on x86 (one is loaded at
run time, by what the CPU supports), CUDA sources when torch has CUDA."""

import glob
import os
import platform
import sys

from setuptools import setup

# at::vec::Vectorized only emits SIMD code when CPU_CAPABILITY_* and the matching -m flags are
# set; without them it silently runs scalar code (measured 27x slower than ATen here).
SIMD_FLAGS = {
    "lmforge._C": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2",
                   "-DCPU_CAPABILITY_AVX2"],
    "lmforge._C_avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                          "-mavx512bf16", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX512",
                          "-DCPU_CAPABILITY_AVX512"],
}


def extensions():
    if os.environ.get("LMFORGE_SKIP_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    class VariantBuild(BuildExtension.with_options(use_ninja=True)):
        """Compiles each module in a build folder of its own: the variants share sources but
        not flags, and would otherwise overwrite each other's objects."""

        def build_extension(self, ext):
            shared_temp = self.build_temp
            self.build_temp = os.path.join(shared_temp, ext.name)
            try:
                super().build_extension(ext)
            finally:
                self.build_temp = shared_temp

    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    x86 = platform.machine() in ("x86_64", "AMD64")
    # at::parallel_for is an inline `omp parallel` region: without -fopenmp it runs serially.
    openmp = ["-fopenmp"] if sys.platform == "linux" else []
    use_cuda = (bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
                and os.environ.get("LMFORGE_SKIP_CUDA_BUILD") != "1")
    modules = []
    for name, simd in (SIMD_FLAGS.items() if x86 else [("lmforge._C", [])]):
        extra = {"cxx": ["-O3", "-std=c++17"] + simd + openmp}
        if use_cuda:
            extra["nvcc"] = ["-O3"]
            modules.append(CUDAExtension(name, sources + cuda_sources, extra_compile_args=extra,
                                         extra_link_args=openmp))
        else:
            modules.append(CppExtension(name, sources, extra_compile_args=extra,
                                        extra_link_args=openmp))
    return modules, {"build_ext": VariantBuild}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
