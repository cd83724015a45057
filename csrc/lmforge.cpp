// The lmforge._C extension: the `lmforge` torch op namespace and the build facts `lmforge doctor` shows.
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

// Op schemas live here; each kernel registers its CPU (and CUDA) implementation with
// TORCH_LIBRARY_IMPL in its own file.
TORCH_LIBRARY(lmforge, m) {}

static std::string simd_level() {
#if defined(CPU_CAPABILITY_AVX512)
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "lmforge kernels: build facts (the kernels themselves are torch ops in torch.ops.lmforge)";
  module.def("build_info", []() {
    pybind11::dict info;
    info["simd"] = simd_level();
    info["torch"] = TORCH_VERSION;
#if defined(__VERSION__)
    info["compiler"] = __VERSION__;
#endif
    return info;
  });
}
