// Launcher of the tensor-product kernel (tp_kernels.cu). Host-callable; no FFI types here.
#pragma once

#include <cuda_runtime_api.h>

#include "core/tp.h"

namespace jbm::cuda {

// ops[s]: device row data of slot s (nullptr for the output slot). Zeroes and fills `out`. Runs the
// kernel named by call.kernel (the channelwise one when its shared memory fits, else the generic one).
template <typename T>
cudaError_t launch_tp(cudaStream_t stream, const core::TpCall& call, const core::TpPath* paths,
                      const int32_t* cg_ijk, const T* cg_c, const T* path_weight, const T* const ops[4], T* out);

}  // namespace jbm::cuda
