// Channelwise ("uvu") tensor product with compile-time Clebsch-Gordan blocks: the hot case of MACE,
// NequIP and Nequix, where y carries one channel (spherical harmonics) and each channel u of x meets it
// through its own weight w[u]:
//     z[u, k] += pw * w[u] * sum C[i, j, k] * x[u, i] * y[j]          (C: csrc/core/generated/cg_blocks.h)
// Every slot of csrc/core/tp.h is one function here, for one channel of one path; indices are
// compile-time constants after inlining, so x[u, :], y, z[u, :] live in registers. The CPU loop
// (csrc/cpu/tp_cpu.h) and the CUDA kernel (csrc/cuda/tp_kernels.cu) call these same functions.
//
// A problem qualifies (TpKernel::kUvu, decided in Python where the tables are built) when every path is
// uvu, y has one channel per irrep (mul2 = 1) and every degree is at most kCgMaxL.
#pragma once

#include "core/generated/cg_blocks.h"
#include "core/tp.h"

namespace jbm::core {

// Contribution of channel u of one path to the operand in slot SLOT.
//   xu = &x[off1 + u * (2 L1 + 1)], yp = &y[off2], zu = &z[off_out + u * (2 LO + 1)];
//   scale = pw * w[u] (pw alone for slot W, whose result is returned, not added).
// For slots X, Y, Z the result is added to `dst` (laid out like xu, yp, zu respectively).
template <int L1, int L2, int LO, TpSlot SLOT, typename T>
JBM_HD T uvu_channel(const T* xu, const T* yp, const T* zu, T scale, T* dst) {
  constexpr int D1 = 2 * L1 + 1, D2 = 2 * L2 + 1, DO = 2 * LO + 1;
  constexpr int DA = SLOT == TpSlot::kX ? D1 : SLOT == TpSlot::kY ? D2 : SLOT == TpSlot::kZ ? DO : 1;
  T xr[D1], yr[D2], zr[DO], acc[DA];
  if constexpr (SLOT != TpSlot::kX)
    for (int i = 0; i < D1; ++i) xr[i] = xu[i];
  if constexpr (SLOT != TpSlot::kY)
    for (int j = 0; j < D2; ++j) yr[j] = yp[j];
  if constexpr (SLOT != TpSlot::kZ)
    for (int k = 0; k < DO; ++k) zr[k] = zu[k];
  for (int a = 0; a < DA; ++a) acc[a] = T(0);
  CgBlock<L1, L2, LO>::for_each([&](int i, int j, int k, double c) {
    if constexpr (SLOT == TpSlot::kZ) acc[k] += T(c) * xr[i] * yr[j];
    if constexpr (SLOT == TpSlot::kX) acc[i] += T(c) * yr[j] * zr[k];
    if constexpr (SLOT == TpSlot::kY) acc[j] += T(c) * xr[i] * zr[k];
    if constexpr (SLOT == TpSlot::kW) acc[0] += T(c) * xr[i] * yr[j] * zr[k];
  });
  if constexpr (SLOT == TpSlot::kW) {
    return scale * acc[0];
  } else {
    for (int a = 0; a < DA; ++a) dst[a] += scale * acc[a];
    return T(0);
  }
}

// ---- y contracted once per row and path ---------------------------------------------------------
// With y a single channel, the CG block and y can be contracted once per row (edge) and path and the
// result shared by every channel:
//     M[i, k] = pw * sum_j C[i, j, k] y[j]                      (D1 x DO, row-major)
//     slot z: z[u, k] += w[u] * sum_i x[u, i] M[i, k]
//     slot x: x[u, i] += w[u] * sum_k M[i, k] z[u, k]
//     slot w: w[u]    += sum_{i, k} x[u, i] M[i, k] z[u, k]
// Per channel that is D1 * DO multiply-adds, against two per CG entry plus the y loads in uvu_channel
// (the convolution's hot loop, csrc/cuda/tp_kernels.cu; also the CPU loop, csrc/cpu/tp_cpu.h).

// Elements of one path's contracted block in a row of blocks: D1 * DO rounded up to 4, so that every
// block starts 16-byte aligned (vector loads) for float and double.
JBM_HD constexpr int32_t uvu_contracted_stride(int32_t dim1, int32_t dim_out) { return (dim1 * dim_out + 3) / 4 * 4; }
inline constexpr int kUvuMaxContracted = (2 * kCgMaxL + 1) * (2 * kCgMaxL + 1);

template <int L1, int L2, int LO, typename T>
JBM_HD void uvu_contract_y(const T* yp, T pw, T* m) {
  constexpr int D2 = 2 * L2 + 1, DM = (2 * L1 + 1) * (2 * LO + 1), DO = 2 * LO + 1;
  T yr[D2], mr[DM];
  for (int j = 0; j < D2; ++j) yr[j] = yp[j];
  for (int q = 0; q < DM; ++q) mr[q] = T(0);
  CgBlock<L1, L2, LO>::for_each([&](int i, int j, int k, double c) { mr[i * DO + k] += T(c) * yr[j]; });
  for (int q = 0; q < DM; ++q) m[q] = pw * mr[q];
}

// One channel through a contracted block m: xu = x[u, :] (slots z, w), zu = z[u, :] (slots x, w);
// slots z and x add scale times their result to acc, slot w returns it (scale ignored).
template <int L1, int LO, TpSlot SLOT, typename T>
JBM_HD T uvu_channel_contracted(const T* xu, const T* zu, const T* m, T scale, T* acc) {
  constexpr int D1 = 2 * L1 + 1, DO = 2 * LO + 1;
  if constexpr (SLOT == TpSlot::kZ) {
    // Scale the shorter side: D1 * DO + min(D1, DO) multiplies.
    if constexpr (D1 <= DO) {
      T xs[D1];
      for (int i = 0; i < D1; ++i) xs[i] = scale * xu[i];
      for (int i = 0; i < D1; ++i)
        for (int k = 0; k < DO; ++k) acc[k] += xs[i] * m[i * DO + k];
    } else {
      T s[DO];
      for (int k = 0; k < DO; ++k) s[k] = T(0);
      for (int i = 0; i < D1; ++i)
        for (int k = 0; k < DO; ++k) s[k] += xu[i] * m[i * DO + k];
      for (int k = 0; k < DO; ++k) acc[k] += scale * s[k];
    }
  } else if constexpr (SLOT == TpSlot::kX) {
    if constexpr (DO <= D1) {
      T zs[DO];
      for (int k = 0; k < DO; ++k) zs[k] = scale * zu[k];
      for (int i = 0; i < D1; ++i)
        for (int k = 0; k < DO; ++k) acc[i] += m[i * DO + k] * zs[k];
    } else {
      for (int i = 0; i < D1; ++i) {
        T s = T(0);
        for (int k = 0; k < DO; ++k) s += m[i * DO + k] * zu[k];
        acc[i] += scale * s;
      }
    }
  } else if constexpr (SLOT == TpSlot::kW) {
    T s = T(0);
    for (int i = 0; i < D1; ++i) {
      T t = T(0);
      for (int k = 0; k < DO; ++k) t += m[i * DO + k] * zu[k];
      s += xu[i] * t;
    }
    return s;
  }
  return T(0);
}

// ---- slot y with the channels summed first ---------------------------------------------------------
// The y gradient of one path sums over channels:
//     dy[j] = pw * sum_{i, k} C[i, j, k] * B[i, k],   B[i, k] = sum_u w[u] * x[u, i] * z[u, k]
// so the channels meet only through B (D1 x DO): a caller adds each channel's outer product to B
// (D1 * DO multiply-adds) and contracts B with the CG block once, instead of two multiply-adds per CG
// entry and channel. The CPU loop sums B over all channels; a GPU warp over its lanes' channels, then
// reduces the D2 results across lanes.
template <int L1, int LO, typename T>
JBM_HD void uvu_outer_add(const T* xu, const T* zu, T scale, T* b) {
  constexpr int D1 = 2 * L1 + 1, DO = 2 * LO + 1;
  T xs[D1];
  for (int i = 0; i < D1; ++i) xs[i] = scale * xu[i];
  for (int i = 0; i < D1; ++i)
    for (int k = 0; k < DO; ++k) b[i * DO + k] += xs[i] * zu[k];
}

// dy[j] += sum_{i, k} C[i, j, k] * b[i, k] (the path weight is the caller's).
template <int L1, int L2, int LO, typename T>
JBM_HD void uvu_contract_outer(const T* b, T* dy) {
  constexpr int DO = 2 * LO + 1;
  CgBlock<L1, L2, LO>::for_each([&](int i, int j, int k, double c) { dy[j] += T(c) * b[i * DO + k]; });
}

// Runs `body(IntC<L>)` for a degree 0 <= l <= kCgMaxL (the largest one for anything above).
template <typename F>
JBM_HD void degree_dispatch(int l, F&& body) {
  static_assert(kCgMaxL == 3, "degree_dispatch lists the degrees 0..3");
  switch (l) {
    case 0: body(IntC<0>{}); break;
    case 1: body(IntC<1>{}); break;
    case 2: body(IntC<2>{}); break;
    default: body(IntC<3>{}); break;
  }
}

// Runs `body(IntC<L1>, IntC<L2>, IntC<LO>)` for path `p`; false if its degrees have no generated block.
template <typename F>
JBM_HD bool uvu_dispatch(const TpPath& p, F&& body) {
  return cg_dispatch((p.dim1 - 1) / 2, (p.dim2 - 1) / 2, (p.dim_out - 1) / 2, static_cast<F&&>(body));
}

// Whether a path contributes to slot SLOT (see TpCall::with_unweighted).
template <TpSlot SLOT>
JBM_HD bool uvu_path_active(const TpPath& p, bool with_unweighted) {
  return p.off_w >= 0 || (SLOT != TpSlot::kW && with_unweighted);
}

// Channel u of path p (degrees L1, L2, LO) for one row: x, y, z are rows of those operands (the one of
// SLOT is not read), w the weight row or shared vector, and `out` a row laid out like the operand of
// SLOT, to which the contribution is added.
template <TpSlot SLOT, int L1, int L2, int LO, typename T>
JBM_HD void uvu_apply(const TpPath& p, int32_t u, T pw, const T* x, const T* y, const T* w, const T* z, T* out) {
  constexpr int D1 = 2 * L1 + 1, DO = 2 * LO + 1;
  const int64_t xo = p.off1 + int64_t(u) * D1, zo = p.off_out + int64_t(u) * DO, wi = int64_t(p.off_w) + u;
  const T* xu = SLOT == TpSlot::kX ? nullptr : x + xo;
  const T* yp = SLOT == TpSlot::kY ? nullptr : y + p.off2;
  const T* zu = SLOT == TpSlot::kZ ? nullptr : z + zo;
  if constexpr (SLOT == TpSlot::kW) {
    out[wi] += uvu_channel<L1, L2, LO, SLOT>(xu, yp, zu, pw, static_cast<T*>(nullptr));
  } else {
    const T scale = p.off_w >= 0 ? pw * w[wi] : pw;
    T* dst = SLOT == TpSlot::kX ? out + xo : SLOT == TpSlot::kY ? out + p.off2 : out + zo;
    uvu_channel<L1, L2, LO, SLOT>(xu, yp, zu, scale, dst);
  }
}

}  // namespace jbm::core
