// Shared by the CPU loops and the CUDA kernels: every formula in csrc/core is compiled for both.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define JBM_HD __host__ __device__ __forceinline__
#else
#define JBM_HD inline
#endif

namespace jbm::core {

// Same numbering as the Python side (jaxbatmobile/_src/sh.py, _NORMALIZATIONS).
enum class ShNormalization : int32_t { kComponent = 0, kNorm = 1, kIntegral = 2 };

}  // namespace jbm::core
