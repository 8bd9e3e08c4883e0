// The _cuda extension: FFI handler capsules for XLA:CUDA, under the same target names as _cpu.
#include <cuda_runtime_api.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "ffi/module_util.h"
#include "ffi/targets.h"

namespace nb = nanobind;

NB_MODULE(_cuda, m) {
  m.def("registrations", []() {
    nb::dict d;
    d["jbm_sh_fwd"] = jbm::handler_capsule(JbmShFwdCuda);
    d["jbm_sh_jvp"] = jbm::handler_capsule(JbmShJvpCuda);
    d["jbm_sh_vjp"] = jbm::handler_capsule(JbmShVjpCuda);
    d["jbm_tp"] = jbm::handler_capsule(JbmTpCuda);
    d["jbm_tp_grads"] = jbm::handler_capsule(JbmTpGradsCuda);
    d["jbm_tp_grads2"] = jbm::handler_capsule(JbmTpGrads2Cuda);
    return d;
  });
  m.def("build_info", []() {
    nb::dict d;
    d["cuda_archs"] = std::string(JBM_CUDA_ARCHS);
    d["cuda_compiler_version"] = std::string(JBM_CUDA_VERSION);
    int runtime = 0;
    cudaRuntimeGetVersion(&runtime);
    d["cuda_runtime_version"] = runtime;
    return d;
  });
}
