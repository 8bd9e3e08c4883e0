// XLA FFI handlers for spherical harmonics on CUDA: validate, dispatch the dtype, launch, check.
#include <cuda_runtime_api.h>

#include "cuda/sh_kernels.h"
#include "ffi/sh_problem.h"
#include "ffi/targets.h"

namespace ffi = xla::ffi;

namespace jbm {
namespace {

ffi::Error sh_cuda(cudaStream_t stream, ShMode mode, ffi::AnyBuffer v, const ffi::AnyBuffer* aux,
                   ffi::Result<ffi::AnyBuffer> out, int32_t lmax, int32_t normalize,
                   int32_t normalization) {
  ShCall call;
  ffi::Error error = check_sh(mode, v, aux, *out, lmax, normalize, normalization, &call);
  if (error.failure()) return error;
  const void* aux_data = aux ? aux->untyped_data() : nullptr;
  cudaError_t err;
  if (v.element_type() == ffi::DataType::F32) {
    err = cuda::launch_sh<float>(stream, call, static_cast<const float*>(v.untyped_data()),
                                 static_cast<const float*>(aux_data),
                                 static_cast<float*>(out->untyped_data()));
  } else {
    err = cuda::launch_sh<double>(stream, call, static_cast<const double*>(v.untyped_data()),
                                  static_cast<const double*>(aux_data),
                                  static_cast<double*>(out->untyped_data()));
  }
  if (err != cudaSuccess)
    return ffi::Error::Internal(ffi_util::str(sh_op_name(mode), " kernel launch failed: ",
                                              cudaGetErrorString(err)));
  return ffi::Error::Success();
}

ffi::Error sh_fwd_cuda(cudaStream_t s, ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> y,
                       int32_t lmax, int32_t normalize, int32_t normalization) {
  return sh_cuda(s, ShMode::kFwd, v, nullptr, y, lmax, normalize, normalization);
}
ffi::Error sh_jvp_cuda(cudaStream_t s, ffi::AnyBuffer v, ffi::AnyBuffer dv,
                       ffi::Result<ffi::AnyBuffer> dy, int32_t lmax, int32_t normalize,
                       int32_t normalization) {
  return sh_cuda(s, ShMode::kJvp, v, &dv, dy, lmax, normalize, normalization);
}
ffi::Error sh_vjp_cuda(cudaStream_t s, ffi::AnyBuffer v, ffi::AnyBuffer g,
                       ffi::Result<ffi::AnyBuffer> gv, int32_t lmax, int32_t normalize,
                       int32_t normalization) {
  return sh_cuda(s, ShMode::kVjp, v, &g, gv, lmax, normalize, normalization);
}

}  // namespace
}  // namespace jbm

#define JBM_STREAM .Ctx<ffi::PlatformStream<cudaStream_t>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmShFwdCuda, jbm::sh_fwd_cuda,
                              ffi::Ffi::Bind() JBM_STREAM.Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JBM_SH_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmShJvpCuda, jbm::sh_jvp_cuda,
                              ffi::Ffi::Bind() JBM_STREAM.Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() JBM_SH_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmShVjpCuda, jbm::sh_vjp_cuda,
                              ffi::Ffi::Bind() JBM_STREAM.Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() JBM_SH_ATTRS);
