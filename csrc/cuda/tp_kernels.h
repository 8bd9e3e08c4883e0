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

// Gradients of slot z's operands (jbm_tp_grads): those whose pointer is non-null among dy (call `cy`, slot
// y), dw (call `cw`, slot w; per-row weights) and dx. dy and dw run in one pass when the channelwise
// kernel serves them (x, z and the weights read once), else one after the other; for products of a
// compiled shape (core/tp_uvu_shape.h) any set runs in one pass (on a graph: dx [nodes, dim_x], summed
// over each sender's edges by atomic adds, or stored per sender in a fixed order: core::DxLists); dx of
// any other call is cudaErrorInvalidValue. y: the y operand of `cw` (data, or edge vectors when
// cw.sh_lmax >= 0).
template <typename T>
cudaError_t launch_tp_grads(cudaStream_t stream, const core::TpCall& cy, const core::TpCall& cw,
                         const core::TpPath* paths, const int32_t* cg_ijk, const T* cg_c, const T* path_weight,
                         const T* x, const T* y, const T* w, const T* z, T* dy, T* dw, T* dx,
                         const core::DxLists& dx_lists);

// The second-order pass of the force-training step (tensor_product.py, tp_grads2_p): for a slot-z graph call
// `c` of a compiled shape (y: data, or edge vectors when c.sh_lmax >= 0) and the cotangents c_dy [rows,
// dim_y] and c_dw [rows, num_w] of its fused y and weight gradients, c_x = T_x(c_dy, w, z) + T_x(Y, c_dw, z)
// [nodes, dim_x], c_w = T_w(x, c_dy, z) [rows, num_w] and c_z = T_z(x, c_dy, w) + T_z(x, Y, c_dw) [nodes,
// dim_z], those whose pointer is non-null, in one pass (atomic adds); cudaErrorInvalidValue for any other call.
template <typename T>
cudaError_t launch_tp_grads2(cudaStream_t stream, const core::TpCall& c, const core::TpPath* paths, const T* path_weight,
                             const T* x, const T* y, const T* w, const T* z, const T* c_dy, const T* c_dw, T* c_x,
                             T* c_w, T* c_z);

}  // namespace jbm::cuda
