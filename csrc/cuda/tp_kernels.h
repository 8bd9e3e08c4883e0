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

// The y gradient (call `cy`, slot y) and the per-row weight gradient (call `cw`, slot w) of the same
// operands, in one pass when the channelwise kernel serves them (x, z and the weights read once), else
// one after the other. y: the y operand of `cw` (data, or edge vectors when cw.sh_lmax >= 0).
// dx (nullable): also the x gradient, for products of a compiled shape only (core/tp_uvu_shape.h; on a
// graph [nodes, dim_x], summed over each sender's edges by atomic adds; cudaErrorInvalidValue for any
// other call).
template <typename T>
cudaError_t launch_tp_grads(cudaStream_t stream, const core::TpCall& cy, const core::TpCall& cw,
                         const core::TpPath* paths, const int32_t* cg_ijk, const T* cg_c, const T* path_weight,
                         const T* x, const T* y, const T* w, const T* z, T* dy, T* dw, T* dx);

}  // namespace jbm::cuda
