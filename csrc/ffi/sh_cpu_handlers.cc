// XLA FFI handlers for spherical harmonics on the CPU: validate, dispatch the dtype, run cpu/ loops.
#include "cpu/sh_cpu.h"
#include "ffi/sh_problem.h"
#include "ffi/targets.h"

namespace ffi = xla::ffi;

namespace jbm {
namespace {

ffi::Error sh_cpu(ShMode mode, ffi::AnyBuffer v, const ffi::AnyBuffer* aux,
                  ffi::Result<ffi::AnyBuffer> out, int32_t lmax, int32_t normalize,
                  int32_t normalization) {
  ShCall call;
  ffi::Error error = check_sh(mode, v, aux, *out, lmax, normalize, normalization, &call);
  if (error.failure()) return error;
  const void* aux_data = aux ? aux->untyped_data() : nullptr;
  if (v.element_type() == ffi::DataType::F32) {
    cpu::sh<float>(call, static_cast<const float*>(v.untyped_data()),
                   static_cast<const float*>(aux_data), static_cast<float*>(out->untyped_data()));
  } else {
    cpu::sh<double>(call, static_cast<const double*>(v.untyped_data()),
                    static_cast<const double*>(aux_data), static_cast<double*>(out->untyped_data()));
  }
  return ffi::Error::Success();
}

ffi::Error sh_fwd_cpu(ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> y, int32_t lmax,
                      int32_t normalize, int32_t normalization) {
  return sh_cpu(ShMode::kFwd, v, nullptr, y, lmax, normalize, normalization);
}
ffi::Error sh_jvp_cpu(ffi::AnyBuffer v, ffi::AnyBuffer dv, ffi::Result<ffi::AnyBuffer> dy,
                      int32_t lmax, int32_t normalize, int32_t normalization) {
  return sh_cpu(ShMode::kJvp, v, &dv, dy, lmax, normalize, normalization);
}
ffi::Error sh_vjp_cpu(ffi::AnyBuffer v, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> gv,
                      int32_t lmax, int32_t normalize, int32_t normalization) {
  return sh_cpu(ShMode::kVjp, v, &g, gv, lmax, normalize, normalization);
}

}  // namespace
}  // namespace jbm


XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmShFwdCpu, jbm::sh_fwd_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() JBM_SH_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmShJvpCpu, jbm::sh_jvp_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JBM_SH_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmShVjpCpu, jbm::sh_vjp_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JBM_SH_ATTRS);
