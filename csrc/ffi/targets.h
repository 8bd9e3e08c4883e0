// Every FFI handler symbol, per platform. The Python side registers them under the target names in
// cpu_module.cc / cuda_module.cc, which are the same on both platforms.
#pragma once

#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmShFwdCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmShJvpCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmShVjpCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmTpCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmTpGradsCpu);

XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmShFwdCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmShJvpCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmShVjpCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmTpCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmTpGradsCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JbmTpGrads2Cuda);  // (CUDA only: the CPU runs tp_grads2_p term by term)
