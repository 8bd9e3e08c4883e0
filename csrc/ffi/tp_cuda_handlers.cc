// XLA FFI handler for the tensor product on CUDA: validate, dispatch the dtype, launch, check.
#include <cuda_runtime_api.h>

#include "cuda/tp_kernels.h"
#include "ffi/targets.h"
#include "ffi/tp_problem.h"

namespace ffi = xla::ffi;

namespace jbm {
namespace {

template <typename T>
cudaError_t run(cudaStream_t s, const core::TpCall& c, const TpBuffers& bufs, const ffi::AnyBuffer& paths,
                const ffi::AnyBuffer& cg_ijk, const ffi::AnyBuffer& cg_c, const ffi::AnyBuffer& pw, ffi::AnyBuffer& out) {
  const T* ops[4];
  for (int k = 0; k < 4; ++k) ops[k] = bufs.ops[k] ? static_cast<const T*>(bufs.ops[k]->untyped_data()) : nullptr;
  return cuda::launch_tp<T>(s, c, static_cast<const core::TpPath*>(paths.untyped_data()),
                            static_cast<const int32_t*>(cg_ijk.untyped_data()),
                            static_cast<const T*>(cg_c.untyped_data()),
             static_cast<const T*>(pw.untyped_data()), ops, static_cast<T*>(out.untyped_data()));
}

ffi::Error tp_cuda(cudaStream_t stream, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer c, ffi::AnyBuffer senders,
                  ffi::AnyBuffer receivers, ffi::AnyBuffer seg_offsets, ffi::AnyBuffer seg_edges, ffi::AnyBuffer seg_pieces, ffi::AnyBuffer paths,
                   ffi::AnyBuffer cg_ijk, ffi::AnyBuffer cg_c, ffi::AnyBuffer pw, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> scratch, int32_t slot,
                   int32_t shared_w, int32_t with_unweighted, int32_t dim_x, int32_t dim_y, int32_t dim_z, int32_t num_w,
                   int64_t num_items, int32_t kernel, int32_t zero_fill, int64_t num_nodes,
                   int32_t sh_lmax, int32_t sh_normalize, int32_t sh_normalization, int32_t yc_width) {
  TpBuffers bufs;
  core::TpCall call;
  ffi::Error error = check_tp(a, b, c, senders, receivers, seg_offsets, seg_edges, seg_pieces, &*scratch, paths, cg_ijk, cg_c, pw, &*out, slot, shared_w, with_unweighted, dim_x, dim_y, dim_z, num_w, num_items, kernel, zero_fill, num_nodes,
                       sh_lmax, sh_normalize, sh_normalization, yc_width, &bufs, &call);
  if (error.failure()) return error;
  const cudaError_t err = a.element_type() == ffi::DataType::F32
                              ? run<float>(stream, call, bufs, paths, cg_ijk, cg_c, pw, *out)
                              : run<double>(stream, call, bufs, paths, cg_ijk, cg_c, pw, *out);
  if (err != cudaSuccess)
    return ffi::Error::Internal(ffi_util::str(kTpOp, " kernel launch failed: ", cudaGetErrorString(err)));
  return ffi::Error::Success();
}

// The gradients of slot z's operands (jbm_tp_grads): dy and dw in one pass on the channelwise kernel, and
// for products of a compiled shape any of dx, dy, dw in one pass (csrc/cuda/tp_kernels.cu).
ffi::Error tp_grads_cuda(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer y, ffi::AnyBuffer w, ffi::AnyBuffer z,
                         ffi::AnyBuffer senders, ffi::AnyBuffer receivers, ffi::AnyBuffer seg_offsets,
                         ffi::AnyBuffer seg_edges, ffi::AnyBuffer seg_pieces, ffi::AnyBuffer paths, ffi::AnyBuffer cg_ijk,
                         ffi::AnyBuffer cg_c, ffi::AnyBuffer pw, ffi::Result<ffi::AnyBuffer> dy,
                         ffi::Result<ffi::AnyBuffer> dw, ffi::Result<ffi::AnyBuffer> dx,
                         ffi::Result<ffi::AnyBuffer> scratch, int32_t deterministic, int32_t shared_w,
                         int32_t with_unweighted, int32_t dim_x, int32_t dim_y, int32_t dim_z, int32_t num_w,
                         int64_t num_items, int32_t kernel, int32_t zero_fill, int64_t num_nodes, int32_t sh_lmax,
                         int32_t sh_normalize, int32_t sh_normalization, int32_t yc_width) {
  TpBuffers bufs_y, bufs_w;
  core::TpCall call_y, call_w;
  core::DxLists dx_lists;
  ffi::Error error = check_tp_grads(x, y, w, z, senders, receivers, seg_offsets, seg_edges, seg_pieces, paths, cg_ijk,
                                    cg_c, pw, *dy, *dw, *dx, *scratch, deterministic, shared_w, with_unweighted, dim_x,
                                    dim_y, dim_z, num_w, num_items, kernel, zero_fill, num_nodes, sh_lmax,
                                    sh_normalize, sh_normalization, yc_width, &bufs_y, &call_y, &bufs_w, &call_w,
                                    &dx_lists);
  if (error.failure()) return error;
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    auto data = [](const ffi::AnyBuffer& b) { return static_cast<const T*>(b.untyped_data()); };
    auto result = [](ffi::AnyBuffer& b) { return b.element_count() ? static_cast<T*>(b.untyped_data()) : nullptr; };
    return cuda::launch_tp_grads<T>(stream, call_y, call_w, static_cast<const core::TpPath*>(paths.untyped_data()),
                                 static_cast<const int32_t*>(cg_ijk.untyped_data()), data(cg_c), data(pw), data(x),
                                 data(y), data(w), data(z), result(*dy), result(*dw), result(*dx), dx_lists);
  };
  const cudaError_t err = x.element_type() == ffi::DataType::F32 ? launch(float{}) : launch(double{});
  if (err != cudaSuccess)
    return ffi::Error::Internal(ffi_util::str(kTpGradsOp, " kernel launch failed: ", cudaGetErrorString(err)));
  return ffi::Error::Success();
}

// The second-order pass of the force-training step (jbm_tp_grads2): c_x, c_w, c_z in one kernel.
ffi::Error tp_grads2_cuda(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer y, ffi::AnyBuffer w, ffi::AnyBuffer z,
                          ffi::AnyBuffer c_dy, ffi::AnyBuffer c_dw, ffi::AnyBuffer senders, ffi::AnyBuffer receivers,
                          ffi::AnyBuffer seg_offsets, ffi::AnyBuffer seg_edges, ffi::AnyBuffer seg_pieces,
                          ffi::AnyBuffer paths, ffi::AnyBuffer cg_ijk, ffi::AnyBuffer cg_c, ffi::AnyBuffer pw,
                          ffi::Result<ffi::AnyBuffer> c_x, ffi::Result<ffi::AnyBuffer> c_w,
                          ffi::Result<ffi::AnyBuffer> c_z, int32_t shared_w, int32_t with_unweighted, int32_t dim_x,
                          int32_t dim_y, int32_t dim_z, int32_t num_w, int64_t num_items, int32_t kernel,
                          int32_t zero_fill, int64_t num_nodes, int32_t sh_lmax, int32_t sh_normalize,
                          int32_t sh_normalization, int32_t yc_width) {
  TpBuffers bufs;
  core::TpCall call;
  ffi::Error error = check_tp_grads2(x, y, w, z, c_dy, c_dw, senders, receivers, seg_offsets, seg_edges, seg_pieces,
                                     paths, cg_ijk, cg_c, pw, *c_x, *c_w, *c_z, shared_w, with_unweighted, dim_x, dim_y,
                                     dim_z, num_w, num_items, kernel, zero_fill, num_nodes, sh_lmax, sh_normalize,
                                     sh_normalization, yc_width, &bufs, &call);
  if (error.failure()) return error;
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    auto data = [](const ffi::AnyBuffer& b) { return static_cast<const T*>(b.untyped_data()); };
    auto result = [](ffi::AnyBuffer& b) { return b.element_count() ? static_cast<T*>(b.untyped_data()) : nullptr; };
    return cuda::launch_tp_grads2<T>(stream, call, static_cast<const core::TpPath*>(paths.untyped_data()), data(pw),
                                     data(x), data(y), data(w), data(z), data(c_dy), data(c_dw), result(*c_x),
                                     result(*c_w), result(*c_z));
  };
  const cudaError_t err = x.element_type() == ffi::DataType::F32 ? launch(float{}) : launch(double{});
  if (err == cudaErrorInvalidValue)
    return ffi::Error::InvalidArgument(ffi_util::str(kTpGrads2Op, " serves the compiled shapes only"));
  if (err != cudaSuccess)
    return ffi::Error::Internal(ffi_util::str(kTpGrads2Op, " kernel launch failed: ", cudaGetErrorString(err)));
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jbm

XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmTpCuda, jbm::tp_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>() JBM_TP_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmTpGradsCuda, jbm::tp_grads_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>() JBM_TP_GRADS_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmTpGrads2Cuda, jbm::tp_grads2_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>() JBM_TP_GRADS2_BIND);
