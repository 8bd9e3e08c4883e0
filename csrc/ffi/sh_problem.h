// Validation of a spherical-harmonics call, shared by the CPU and CUDA handlers.
#pragma once

#include "core/sh.h"
#include "ffi/common.h"

namespace jbm {

using core::ShCall;
using core::ShMode;

inline const char* sh_op_name(ShMode mode) {
  switch (mode) {
    case ShMode::kFwd: return "jbm_sh_fwd";
    case ShMode::kJvp: return "jbm_sh_jvp";
    default: return "jbm_sh_vjp";
  }
}

// `aux` is dv (jvp), g (vjp) or nullptr (fwd). Fills *call when the call is valid.
inline xla::ffi::Error check_sh(ShMode mode, const xla::ffi::AnyBuffer& v,
                                             const xla::ffi::AnyBuffer* aux,
                                             const xla::ffi::AnyBuffer& out, int32_t lmax,
                                             int32_t normalize, int32_t normalization, ShCall* call) {
  using ffi_util::invalid;
  const char* op = sh_op_name(mode);
  if (lmax < 0 || lmax > core::kShMaxL)
    return invalid("l_max of ", op, " must be in [0, ", core::kShMaxL, "], got ", lmax);
  if (normalization < 0 || normalization > 2)
    return invalid("normalization code of ", op, " must be 0, 1 or 2, got ", normalization);
  const auto dims = v.dimensions();
  if (dims.size() < 1 || dims.back() != 3)
    return invalid("input vectors to ", op, " must have a trailing dimension of 3");
  if (!ffi_util::is_supported_float(v.element_type()))
    return invalid("input vectors to ", op, " must be float32 or float64, got ",
                   ffi_util::dtype_name(v.element_type()));
  const int64_t n = static_cast<int64_t>(v.element_count() / 3);
  const int64_t dim = core::sh_dim(lmax);
  const int64_t aux_width = mode == ShMode::kJvp ? 3 : dim;
  const int64_t out_width = mode == ShMode::kVjp ? 3 : dim;
  if (aux != nullptr) {
    const char* name = mode == ShMode::kJvp ? "tangent dv" : "cotangent g";
    if (aux->element_type() != v.element_type())
      return invalid(name, " of ", op, " must have the dtype of the vectors");
    if (static_cast<int64_t>(aux->element_count()) != n * aux_width)
      return invalid("invalid size of ", name, " to ", op, ": expected ", n * aux_width,
                     " elements, got ", aux->element_count());
  }
  if (out.element_type() != v.element_type())
    return invalid("output of ", op, " must have the dtype of the vectors");
  if (static_cast<int64_t>(out.element_count()) != n * out_width)
    return invalid("invalid output size of ", op, ": expected ", n * out_width, " elements, got ",
                   out.element_count());
  *call = ShCall{mode, n, static_cast<int>(lmax), normalize != 0,
                 static_cast<core::ShNormalization>(normalization)};
  return xla::ffi::Error::Success();
}

}  // namespace jbm

// The attributes every SH handler binds, in the order of the handlers' parameters.
#define JBM_SH_ATTRS \
  .Attr<int32_t>("l_max").Attr<int32_t>("normalize").Attr<int32_t>("normalization")
