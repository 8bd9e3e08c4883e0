// CPU loops over csrc/core/sh.h: one vector at a time, the same formulas the CUDA kernels run.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/sh.h"

namespace jbm::cpu {

template <int LMAX, typename T>
void sh_loop(const core::ShCall& p, const T* v, const T* aux, T* out) {
  constexpr int dim = core::sh_dim(LMAX);
  for (int64_t i = 0; i < p.n; ++i) {
    const T* vi = v + 3 * i;
    switch (p.mode) {
      case core::ShMode::kFwd:
        core::sh_values<LMAX>(vi, p.normalize, p.normalization, out + dim * i);
        break;
      case core::ShMode::kJvp:
        core::sh_jvp<LMAX>(vi, aux + 3 * i, p.normalize, p.normalization, out + dim * i);
        break;
      case core::ShMode::kVjp:
        core::sh_vjp<LMAX>(vi, aux + dim * i, p.normalize, p.normalization, out + 3 * i);
        break;
    }
  }
}

template <typename T> void sh(const core::ShCall& p, const T* v, const T* aux, T* out) {
  core::dispatch_lmax(p.lmax, [&](auto lmax) { sh_loop<decltype(lmax)::value, T>(p, v, aux, out); });
}

}  // namespace jbm::cpu
