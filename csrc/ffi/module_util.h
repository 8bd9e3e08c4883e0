// nanobind glue shared by the _cpu and _cuda modules.
#pragma once

#include <nanobind/nanobind.h>

namespace jbm {

template <typename Fn> nanobind::capsule handler_capsule(Fn* fn) {
  return nanobind::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace jbm
