// The _cpu extension: FFI handler capsules for XLA:CPU, by target name.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "core/sh.h"
#include "core/tp_uvu_shape.h"
#include "ffi/module_util.h"
#include "ffi/targets.h"

namespace nb = nanobind;

NB_MODULE(_cpu, m) {
  m.def("registrations", []() {
    nb::dict d;
    d["jbm_sh_fwd"] = jbm::handler_capsule(JbmShFwdCpu);
    d["jbm_sh_jvp"] = jbm::handler_capsule(JbmShJvpCpu);
    d["jbm_sh_vjp"] = jbm::handler_capsule(JbmShVjpCpu);
    d["jbm_tp"] = jbm::handler_capsule(JbmTpCpu);
    d["jbm_tp_grads"] = jbm::handler_capsule(JbmTpGradsCpu);
    return d;
  });
  m.def("build_info", []() {
    nb::dict d;
    d["sh_max_l"] = jbm::core::kShMaxL;
    nb::list shapes;  // shape codes with compile-time kernels (csrc/core/tp_uvu_shape.h)
    for (uint32_t code : jbm::core::kCompiledShapes) shapes.append(code);
    d["uvu_shapes"] = shapes;
    return d;
  });
}
