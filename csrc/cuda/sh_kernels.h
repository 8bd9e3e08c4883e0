// Launchers of the spherical-harmonics kernels (sh_kernels.cu). Host-callable; no FFI types here.
#pragma once

#include <cuda_runtime_api.h>

#include "core/sh.h"

namespace jbm::cuda {

// Enqueues the kernel for `call` on `stream`; returns the launch error (cudaSuccess when n == 0).
template <typename T>
cudaError_t launch_sh(cudaStream_t stream, const core::ShCall& call, const T* v, const T* aux, T* out);

}  // namespace jbm::cuda
