// CPU loops over csrc/core: rows one after another; the generic kernel runs every item of every path
// (core/tp.h), the channelwise one every channel of every path (core/tp_uvu.h, the GPU's formulas).
#pragma once

#include <algorithm>

#include "core/tp.h"
#include "core/tp_uvu.h"
#include "core/tp_uvu_shape.h"

namespace jbm::cpu {

template <core::TpSlot SLOT, typename T>
void tp_row_generic(const core::TpCall& c, const core::TpPath* paths, const int32_t* cg_ijk, const T* cg_c,
                    const T* pw, const T* const row[4], T* acc) {
  auto add = [acc](int64_t idx, T val) { acc[idx] += val; };
  for (int32_t pi = 0; pi < c.num_paths; ++pi) {
    const core::TpPath& p = paths[pi];
    const int64_t n = core::tp_path_items(p);
    for (int64_t it = 0; it < n; ++it)
      core::tp_item<SLOT>(p, it, pw[pi], c.with_unweighted, row[0], row[1], row[2], row[3], cg_ijk, cg_c, add);
  }
}

// Slots z, x, w contract y with each path's CG block once per row, then run the channels through it
// (core::uvu_contract_y, as the GPU's convolution kernel does); slot y sums the channels' outer products
// first and contracts them once (core::uvu_outer_add, as the GPU's y-gradient kernel does).
template <core::TpSlot SLOT, typename T>
void tp_row_uvu(const core::TpCall& c, const core::TpPath* paths, const T* pw, const T* const row[4], T* acc) {
  using core::TpSlot;
  for (int32_t pi = 0; pi < c.num_paths; ++pi) {
    const core::TpPath& p = paths[pi];
    if (!core::uvu_path_active<SLOT>(p, c.with_unweighted)) continue;
    core::uvu_dispatch(p, [&](auto l1, auto l2, auto lo) {
      constexpr int L1 = decltype(l1)::value, L2 = decltype(l2)::value, LO = decltype(lo)::value;
      if constexpr (SLOT == TpSlot::kY) {
        constexpr int D1 = 2 * L1 + 1, D2 = 2 * L2 + 1, DO = 2 * LO + 1;
        T b[D1 * DO] = {}, dy[D2] = {};
        for (int32_t u = 0; u < p.mul1; ++u) {
          const T scale = p.off_w >= 0 ? row[2][p.off_w + u] : T(1);
          core::uvu_outer_add<L1, LO>(row[0] + p.off1 + int64_t(u) * D1, row[3] + p.off_out + int64_t(u) * DO,
                                      scale, b);
        }
        core::uvu_contract_outer<L1, L2, LO>(b, dy);
        for (int j = 0; j < D2; ++j) acc[p.off2 + j] += pw[pi] * dy[j];
      } else {
        constexpr int D1 = 2 * L1 + 1, DO = 2 * LO + 1;
        T m[D1 * DO];
        core::uvu_contract_y<L1, L2, LO>(row[1] + p.off2, pw[pi], m);
        for (int32_t u = 0; u < p.mul1; ++u) {
          const int64_t xo = p.off1 + int64_t(u) * D1, zo = p.off_out + int64_t(u) * DO, wi = int64_t(p.off_w) + u;
          const T* xu = SLOT == TpSlot::kX ? nullptr : row[0] + xo;
          const T* zu = SLOT == TpSlot::kZ ? nullptr : row[3] + zo;
          if constexpr (SLOT == TpSlot::kW) {
            acc[wi] += core::uvu_channel_contracted<L1, LO, SLOT>(xu, zu, m, T(1), static_cast<T*>(nullptr));
          } else {
            const T scale = p.off_w >= 0 ? row[2][wi] : T(1);
            core::uvu_channel_contracted<L1, LO, SLOT>(xu, zu, m, scale, acc + (SLOT == TpSlot::kZ ? zo : xo));
          }
        }
      }
    });
  }
}

// Slot z of a full channelwise problem (core/tp_uvu_shape.h), channel by channel on its compile-time
// path list; false (nothing added) if the call does not fit the shape.
template <uint32_t X, uint32_t Y, uint32_t O, typename T>
bool tp_row_uvu_shape(const core::TpCall& c, const core::TpPath* paths, const T* pw, const T* const row[4], T* acc) {
  using S = core::UvuShape<X, Y, O>;
  const int32_t mul = c.num_paths > 0 ? paths[0].mul1 : 0;
  T pw_by_index[S::kNumPaths], scale[S::kNumPaths], xu[S::kDimX], zu[S::kDimO];
  if (!row[2] || !core::shape_fits<X, Y, O>(c, mul) ||
      !core::shape_path_weights<S::kNumPaths>(paths, pw, c.num_paths, mul, pw_by_index))
    return false;
  for (int32_t u = 0; u < mul; ++u) {
    core::shape_gather<X>(row[0], mul, u, xu);
    for (int n = 0; n < S::kNumPaths; ++n) scale[n] = pw_by_index[n] * row[2][int64_t(n) * mul + u];
    core::uvu_shape_channel<X, Y, O>(xu, row[1], scale, zu);
    core::shape_scatter<O, true>(zu, mul, u, acc);
  }
  return true;
}

// Gradients of a full channelwise product in one pass (per-row weights): those whose pointer is non-null
// among dx, dy and dw (core::ShapeGrads masks X|Y|W, Y|W and X: the sets Python asks for) of every row from x, y, w and the
// output cotangent dz, channel by channel (core::uvu_shape_channel_grads, the GPU's formulas). `c` is a
// call with the y operand's view of y (data, or edge vectors whose spherical harmonics are computed:
// c.sh_lmax >= 0). Graph calls (c.nodes >= 0): rows are edges, x gathered by sender, dz by receiver, dx
// [nodes, dim_x] summed over each sender's edges in edge order; a dropped edge (index out of range) has
// zero dy and dw rows. False, nothing written, if the call is not one of a compiled shape or the mask
// is not one of those.
template <typename T>
bool tp_grads_uvu_shape(const core::TpCall& c, const core::TpPath* paths, const T* pw, const T* x, const T* y,
                        const T* w, const T* dz, T* dx, T* dy, T* dw) {
  if (c.shared_w || c.kernel != core::TpKernel::kUvu) return false;
  if (c.sh_lmax > core::kTpShMaxL || (c.sh_lmax >= 0 && core::sh_dim(c.sh_lmax) != c.dim_y)) return false;
  const int grads = (dx ? core::kGradX : 0) | (dy ? core::kGradY : 0) | (dw ? core::kGradW : 0);
  return core::uvu_shape_dispatch(c.uvu_shape, [&](auto shape) {
    using Sh = decltype(shape);
    using S = core::UvuShape<Sh::X, Sh::Y, Sh::O>;
    const int32_t mul = c.num_paths > 0 ? paths[0].mul1 : 0;
    T pw_by_index[S::kNumPaths];
    if (!core::shape_fits<Sh::X, Sh::Y, Sh::O>(c, mul) ||
        !core::shape_path_weights<S::kNumPaths>(paths, pw, c.num_paths, mul, pw_by_index))
      return false;
    auto run = [&](auto mask) {
      constexpr int kGrads = decltype(mask)::value;
      T xu[S::kDimX], dzu[S::kDimO], dxu[S::kDimX], sh[core::sh_dim(core::kTpShMaxL)];
      if (dx) std::fill(dx, dx + (c.nodes >= 0 ? c.nodes : c.rows) * c.dim_x, T(0));
      for (int64_t r = 0; r < c.rows; ++r) {
        T* dwr = dw ? dw + r * c.num_w : nullptr;
        T* dyr = dy ? dy + r * c.dim_y : nullptr;
        if (dyr) std::fill(dyr, dyr + c.dim_y, T(0));
        int64_t rx, rz;
        if (!c.edge_rows(r, &rx, &rz)) {
          if (dwr) std::fill(dwr, dwr + c.num_w, T(0));
          continue;
        }
        const T* yr = y + r * c.y_width();
        if (c.sh_lmax >= 0) {
          core::tp_sh_row(c, yr, sh);
          yr = sh;
        }
        const T* wr = w + r * c.num_w;
        for (int32_t u = 0; u < mul; ++u) {
          core::shape_gather<Sh::X>(x + rx * c.dim_x, mul, u, xu);
          core::shape_gather<Sh::O>(dz + rz * c.dim_z, mul, u, dzu);
          core::uvu_shape_channel_grads<Sh::X, Sh::Y, Sh::O, kGrads>(
              xu, yr, dzu, pw_by_index, [&](int n) { return wr[int64_t(n) * mul + u]; }, dxu, dyr,
              [&](int n, T v) { dwr[int64_t(n) * mul + u] = v; });
          if constexpr ((kGrads & core::kGradX) != 0) core::shape_scatter<Sh::X, true>(dxu, mul, u, dx + rx * c.dim_x);
        }
      }
      return true;
    };
    using core::kGradX, core::kGradY, core::kGradW, core::IntC;
    switch (grads) {
      case kGradX | kGradY | kGradW: return run(IntC<kGradX | kGradY | kGradW>{});
      case kGradY | kGradW: return run(IntC<kGradY | kGradW>{});
      case kGradX: return run(IntC<kGradX>{});  // (also a graph without edges asked for all three)
      default: return false;
    }
  });
}

// Adds row r's contribution (x row rx, z row rz) to `acc`, a row of the output (or the shared sum).
template <core::TpSlot SLOT, typename T>
void tp_add_row(const core::TpCall& c, const core::TpPath* paths, const int32_t* cg_ijk, const T* cg_c, const T* pw,
                const T* const ops[4], int64_t r, int64_t rx, int64_t rz, T* acc) {
  const int64_t widths[4] = {c.dim_x, c.y_width(), c.shared_w ? 0 : c.num_w, c.dim_z};
  const int64_t index[4] = {rx, r, r, rz};
  const T* row[4];
  for (int s = 0; s < 4; ++s) row[s] = ops[s] ? ops[s] + index[s] * widths[s] : nullptr;
  T sh[core::sh_dim(core::kTpShMaxL)];
  if (c.sh_lmax >= 0) {  // y is the spherical harmonics of the edge vector
    core::tp_sh_row(c, row[1], sh);
    row[1] = sh;
  }
  if constexpr (SLOT == core::TpSlot::kZ)
    if (c.kernel == core::TpKernel::kUvu && core::uvu_shape_dispatch(c.uvu_shape, [&](auto s) {
          using S = decltype(s);
          return tp_row_uvu_shape<S::X, S::Y, S::O>(c, paths, pw, row, acc);
        }))
      return;
  if (c.kernel == core::TpKernel::kUvu)
    tp_row_uvu<SLOT>(c, paths, pw, row, acc);
  else
    tp_row_generic<SLOT>(c, paths, cg_ijk, cg_c, pw, row, acc);
}

template <core::TpSlot SLOT, typename T>
void tp_slot(const core::TpCall& c, const core::TpPath* paths, const int32_t* cg_ijk, const T* cg_c, const T* pw,
             const T* const ops[4], T* out) {
  const int64_t width = c.out_width();
  if (c.segmented()) {  // node by node over its edge list, as the GPU's deterministic kernels do
    for (int64_t n = 0; n < c.nodes; ++n)
      for (int64_t k = c.seg_offsets[n]; k < c.seg_offsets[n + 1]; ++k) {
        const int64_t e = c.seg_edges ? c.seg_edges[k] : k;
        int64_t rx, rz;
        if (c.segment_edge(e, n, &rx, &rz))
          tp_add_row<SLOT>(c, paths, cg_ijk, cg_c, pw, ops, e, rx, rz, out + n * width);
      }
    return;
  }
  for (int64_t r = 0; r < c.rows; ++r) {
    int64_t rx, rz;
    if (!c.edge_rows(r, &rx, &rz)) continue;
    T* acc = c.reduces_rows() ? out : out + c.out_row(r, rx, rz) * width;
    tp_add_row<SLOT>(c, paths, cg_ijk, cg_c, pw, ops, r, rx, rz, acc);
  }
}

// ops[s] is the operand of slot s (nullptr for the output slot); out receives the gradient.
template <typename T>
void tp(const core::TpCall& c, const core::TpPath* paths, const int32_t* cg_ijk, const T* cg_c, const T* pw,
        const T* const ops[4], T* out) {
  using core::TpSlot;
  std::fill(out, out + c.out_rows() * c.out_width(), T(0));
  switch (c.slot) {
    case TpSlot::kX: return tp_slot<TpSlot::kX>(c, paths, cg_ijk, cg_c, pw, ops, out);
    case TpSlot::kY: return tp_slot<TpSlot::kY>(c, paths, cg_ijk, cg_c, pw, ops, out);
    case TpSlot::kW: return tp_slot<TpSlot::kW>(c, paths, cg_ijk, cg_c, pw, ops, out);
    case TpSlot::kZ: return tp_slot<TpSlot::kZ>(c, paths, cg_ijk, cg_c, pw, ops, out);
  }
}

}  // namespace jbm::cpu
