// CPU loop over csrc/core/tp.h: rows one after another, every item of every path.
#pragma once

#include <algorithm>

#include "core/tp.h"

namespace jbm::cpu {

// ops[s] is the operand of slot s (nullptr for the output slot); out receives the gradient.
template <typename T>
void tp(const core::TpCall& c, const core::TpPath* paths, const int32_t* cg_ijk, const T* cg_c,
        const T* const ops[4], T* out) {
  using core::TpSlot;
  const int64_t width = c.out_width();
  const int64_t out_rows = c.reduces_rows() ? 1 : c.rows;
  std::fill(out, out + out_rows * width, T(0));
  const int64_t widths[4] = {c.dim_x, c.dim_y, c.shared_w ? 0 : c.num_w, c.dim_z};
  for (int64_t r = 0; r < c.rows; ++r) {
    const T* row[4];
    for (int s = 0; s < 4; ++s) row[s] = ops[s] ? ops[s] + r * widths[s] : nullptr;
    T* acc = c.reduces_rows() ? out : out + r * width;
    auto add = [acc](int64_t idx, T val) { acc[idx] += val; };
    for (int32_t pi = 0; pi < c.num_paths; ++pi) {
      const core::TpPath& p = paths[pi];
      const int64_t n = core::tp_path_items(p);
      for (int64_t it = 0; it < n; ++it) {
        switch (c.slot) {
          case TpSlot::kX: core::tp_item<TpSlot::kX>(p, it, c.with_unweighted, row[0], row[1], row[2], row[3], cg_ijk, cg_c, add); break;
          case TpSlot::kY: core::tp_item<TpSlot::kY>(p, it, c.with_unweighted, row[0], row[1], row[2], row[3], cg_ijk, cg_c, add); break;
          case TpSlot::kW: core::tp_item<TpSlot::kW>(p, it, c.with_unweighted, row[0], row[1], row[2], row[3], cg_ijk, cg_c, add); break;
          case TpSlot::kZ: core::tp_item<TpSlot::kZ>(p, it, c.with_unweighted, row[0], row[1], row[2], row[3], cg_ijk, cg_c, add); break;
        }
      }
    }
  }
}

}  // namespace jbm::cpu
