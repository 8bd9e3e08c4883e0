// "Full channelwise" problems known at compile time: MACE-style products where x and the output carry one
// multiplicity U for every irrep, y is one channel per irrep (spherical harmonics), each list holds each
// degree at most once in increasing order, and the instructions are every allowed (l1, l2, l_out) path,
// weighted, in e3nn's channelwise order (jaxbatmobile.channelwise_instructions). Such a problem is fixed
// by its three irreps lists up to U, so its paths, their offsets and weight positions are compile-time
// constants: the GPU's forward kernel for it (tp_uvu_shaped_kernel) is straight-line code over all
// paths with x, y and the output row of a channel in registers — no path table, no runtime dispatch.
//
// A list is coded as 2 bits per degree l = 0..kCgMaxL (bits 2l, 2l+1): 0 absent, 1 even, 2 odd. The
// call's shape code (TpCall::uvu_shape) is X | Y << 8 | O << 16; Python computes it (tensor_product.py,
// _uvu_shape) and the launcher runs the shaped kernel if that code is one it was compiled for.
#pragma once

#include <cstdint>
#include <utility>

#include "core/tp_uvu.h"

namespace jbm::core {

JBM_HD constexpr int shape_parity(uint32_t list, int l) { return static_cast<int>((list >> (2 * l)) & 3u); }
JBM_HD constexpr bool shape_has(uint32_t list, int l) { return shape_parity(list, l) != 0; }
// Components before degree l's block, per channel (x, output: times U for the row offset; y: exact).
JBM_HD constexpr int shape_offset(uint32_t list, int l) {
  int offset = 0;
  for (int k = 0; k < l; ++k) offset += shape_has(list, k) ? 2 * k + 1 : 0;
  return offset;
}
JBM_HD constexpr int shape_dim(uint32_t list) { return shape_offset(list, kCgMaxL + 1); }
JBM_HD constexpr uint32_t shape_code(uint32_t x, uint32_t y, uint32_t o) { return x | y << 8 | o << 16; }

struct ShapePath {
  int l1, l2, lo;
};

// The paths of shape (X, Y, O) in instruction order: l1 over X, l2 over Y, l_out over O, kept when the
// degrees satisfy the triangle rule and the parities multiply.
template <uint32_t X, uint32_t Y, uint32_t O>
struct UvuShape {
  static constexpr int kMaxPaths = (kCgMaxL + 1) * (kCgMaxL + 1) * (kCgMaxL + 1);
  struct Paths {
    int count;
    ShapePath path[kMaxPaths];
  };
  static constexpr Paths enumerate() {
    Paths p{};
    for (int l1 = 0; l1 <= kCgMaxL; ++l1)
      for (int l2 = 0; l2 <= kCgMaxL; ++l2)
        for (int lo = 0; lo <= kCgMaxL; ++lo) {
          if (!shape_has(X, l1) || !shape_has(Y, l2) || !shape_has(O, lo)) continue;
          const bool triangle = lo >= (l1 > l2 ? l1 - l2 : l2 - l1) && lo <= l1 + l2;
          const bool parity = (shape_parity(X, l1) == shape_parity(Y, l2)) == (shape_parity(O, lo) == 1);
          if (triangle && parity) p.path[p.count++] = ShapePath{l1, l2, lo};
        }
    return p;
  }
  static constexpr Paths kPaths = enumerate();
  static constexpr int kNumPaths = kPaths.count;
  static constexpr int kDimX = shape_dim(X), kDimY = shape_dim(Y), kDimO = shape_dim(O);
};

template <typename F, int... I>
JBM_HD void static_for_impl(F& f, std::integer_sequence<int, I...>) {
  (f(IntC<I>{}), ...);
}
// f(IntC<0>{}), ..., f(IntC<N - 1>{}): a loop whose index is a compile-time constant.
template <int N, typename F>
JBM_HD void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// One channel u of one row, slot z: zu[shape_dim(O)] = Σ_paths pw[n] w[n] Σ C x y, with the channel's
// x components (xu, laid out as the blocks of X in order), the row's y and the path scales
// scale[n] = pw[n] · w[row, n · U + u] (instruction order).
// uvu_shape_channel_add adds the same to zu (a graph's edges summed per receiver).
template <uint32_t X, uint32_t Y, uint32_t O, typename T>
JBM_HD void uvu_shape_channel_add(const T* xu, const T* y, const T* scale, T* zu) {
  using S = UvuShape<X, Y, O>;
  static_for<S::kNumPaths>([&](auto n) {
    constexpr ShapePath p = S::kPaths.path[decltype(n)::value];
    uvu_channel<p.l1, p.l2, p.lo, TpSlot::kZ>(xu + shape_offset(X, p.l1), y + shape_offset(Y, p.l2),
                                              static_cast<const T*>(nullptr), scale[decltype(n)::value],
                                              zu + shape_offset(O, p.lo));
  });
}
template <uint32_t X, uint32_t Y, uint32_t O, typename T>
JBM_HD void uvu_shape_channel(const T* xu, const T* y, const T* scale, T* zu) {
  for (int k = 0; k < UvuShape<X, Y, O>::kDimO; ++k) zu[k] = T(0);
  uvu_shape_channel_add<X, Y, O>(xu, y, scale, zu);
}

// Which gradients a backward pass computes (a mask): dx, dy, dw. A single transpose call (slot x, y or w of
// a graph call) is one bit; the fused backward of a product several.
enum ShapeGrads : int { kGradX = 1, kGradY = 2, kGradW = 4 };
// The operands a mask reads: dw reads x and y, dy reads x and the weights, dx y and the weights.
JBM_HD constexpr bool grads_read_x(int grads) { return grads & (kGradY | kGradW); }
JBM_HD constexpr bool grads_read_y(int grads) { return grads & (kGradX | kGradW); }
JBM_HD constexpr bool grads_read_w(int grads) { return grads & (kGradX | kGradY); }

// The backward of slot z for one channel u of one row: given the output cotangent's channel dzu (laid
// out as the blocks of O), the channel's x components xu, the row's y, the path weights pw[n] and the
// channel's weights weight(n) = w[row, n · U + u], the gradients of GRADS (ShapeGrads):
//     dw[n]    = pw[n] · Σ C x_i y_j dz_k                     (kGradW: store_dw(n, value), once per path)
//     dy[j]   += Σ_n pw[n] w[n] Σ C x_i dz_k                   (kGradY: added, the caller sums the channels)
//     dxu[i]   = Σ_n pw[n] w[n] Σ C y_j dz_k                   (kGradX: set, every component written)
// They share one pass over each path's CG entries: g_x[i] = Σ C y_j dz_k and g_y[j] = Σ C x_i dz_k, then
// dw = pw · x · g_x (the weight gradient is the x gradient's contraction with x). Operands a mask does not
// read (grads_read_*) may be garbage; the sums it does not need are not formed.
template <uint32_t X, uint32_t Y, uint32_t O, int GRADS, typename T, typename Weight, typename StoreDw>
JBM_HD void uvu_shape_channel_grads(const T* xu, const T* y, const T* dzu, const T* pw, Weight&& weight, T* dxu, T* dy,
                                    StoreDw&& store_dw) {
  using S = UvuShape<X, Y, O>;
  constexpr bool kDx = GRADS & kGradX, kDy = GRADS & kGradY, kDw = GRADS & kGradW, kGx = kDx || kDw;
  if constexpr (kDx)
    for (int i = 0; i < S::kDimX; ++i) dxu[i] = T(0);
  static_for<S::kNumPaths>([&](auto n) {
    constexpr int N = decltype(n)::value;
    constexpr ShapePath p = S::kPaths.path[N];
    constexpr int D1 = 2 * p.l1 + 1, D2 = 2 * p.l2 + 1, OX = shape_offset(X, p.l1), OY = shape_offset(Y, p.l2);
    [[maybe_unused]] const T* xp = xu + OX;  // (the x gradient alone reads no x, the y gradient no y)
    [[maybe_unused]] const T* yp = y + OY;
    const T* zp = dzu + shape_offset(O, p.lo);
    T gx[D1], gy[D2];
    for (int i = 0; i < D1; ++i) gx[i] = T(0);
    for (int j = 0; j < D2; ++j) gy[j] = T(0);
    CgBlock<p.l1, p.l2, p.lo>::for_each([&](int i, int j, int k, double c) {
      const T a = T(c) * zp[k];
      if constexpr (kGx) gx[i] += a * yp[j];
      if constexpr (kDy) gy[j] += a * xp[i];
    });
    if constexpr (kDw) {
      T t = T(0);
      for (int i = 0; i < D1; ++i) t += xp[i] * gx[i];
      store_dw(N, pw[N] * t);
    }
    if constexpr (kDx || kDy) {
      const T s = pw[N] * weight(N);
      if constexpr (kDx)
        for (int i = 0; i < D1; ++i) dxu[OX + i] += s * gx[i];
      if constexpr (kDy)
        for (int j = 0; j < D2; ++j) dy[OY + j] += s * gy[j];
    }
  });
}

// Channel u's components of a row laid out by LIST with multiplicity `mul` (e3nn's layout: block of
// degree l at mul · shape_offset(l), channel u's 2l + 1 components contiguous): f(offset in the row,
// index among the channel's components cu (blocks in order)) for each. shape_gather reads them into cu,
// shape_scatter stores cu back: set, or added (ADD) when rows accumulate. (The GPU's atomic scatter of
// graph calls walks the same offsets.)
template <uint32_t LIST, typename F>
JBM_HD void shape_for_each(int32_t mul, int32_t u, F&& f) {
  static_for<kCgMaxL + 1>([&](auto l) {
    constexpr int L = decltype(l)::value, D = 2 * L + 1, OFF = shape_offset(LIST, L);
    if constexpr (shape_has(LIST, L)) {
      const int64_t src = int64_t(mul) * OFF + int64_t(u) * D;
      for (int i = 0; i < D; ++i) f(src + i, OFF + i);
    }
  });
}
template <uint32_t LIST, typename T>
JBM_HD void shape_gather(const T* row, int32_t mul, int32_t u, T* cu) {
  shape_for_each<LIST>(mul, u, [&](int64_t at, int k) { cu[k] = row[at]; });
}
template <uint32_t LIST, bool ADD, typename T>
JBM_HD void shape_scatter(const T* cu, int32_t mul, int32_t u, T* row) {
  shape_for_each<LIST>(mul, u, [&](int64_t at, int k) { row[at] = ADD ? row[at] + cu[k] : cu[k]; });
}

// Whether a call's widths are those of shape (X, Y, O) with multiplicity `mul`, every path weighted
// (Python checked the instructions; this keeps a mismatched call off the shaped code).
template <uint32_t X, uint32_t Y, uint32_t O>
JBM_HD bool shape_fits(const TpCall& c, int32_t mul) {
  using S = UvuShape<X, Y, O>;
  return mul > 0 && c.num_paths == S::kNumPaths && c.dim_x == int64_t(mul) * S::kDimX && c.dim_y == S::kDimY &&
         c.dim_z == int64_t(mul) * S::kDimO && c.num_w == int64_t(mul) * S::kNumPaths;
}

// One path's scale at its instruction-order index: pw_by_index[off_w / mul] = w. False if the path is not
// one of a full channelwise problem of multiplicity `mul` (GPU blocks place one path per thread).
template <int N, typename T>
JBM_HD bool shape_path_weight(const TpPath& p, T w, int32_t mul, T* pw_by_index) {
  const int32_t n = p.off_w / mul;
  if (p.off_w < 0 || p.off_w % mul != 0 || n >= N || p.mul1 != mul) return false;
  pw_by_index[n] = w;
  return true;
}

// The path scales of instruction order from a table in any order: pw_by_index[off_w / mul] = pw[pi].
// False if the table is not that of a full channelwise problem of multiplicity `mul`.
template <int N, typename T>
JBM_HD bool shape_path_weights(const TpPath* paths, const T* pw, int32_t num_paths, int32_t mul, T* pw_by_index) {
  for (int32_t pi = 0; pi < num_paths; ++pi)
    if (!shape_path_weight<N>(paths[pi], pw[pi], mul, pw_by_index)) return false;
  return true;
}

// The shapes compiled in, as types: MACE-large (0e+1o+2e ⊗ 0e+1o+2e+3o → 0e+1o+2e+3o) and MACE-medium
// (0e+1o ⊗ 0e+1o+2e+3o → 0e+1o+2e), at any multiplicity. Adding one here adds its kernels.
template <uint32_t X_, uint32_t Y_, uint32_t O_>
struct ShapeC {
  static constexpr uint32_t X = X_, Y = Y_, O = O_;
};
inline constexpr uint32_t kShapeSh3 = 1u | 2u << 2 | 1u << 4 | 2u << 6;  // 0e+1o+2e+3o
inline constexpr uint32_t kShapeL2 = 1u | 2u << 2 | 1u << 4;             // 0e+1o+2e
inline constexpr uint32_t kShapeL1 = 1u | 2u << 2;                       // 0e+1o

inline constexpr uint32_t kShapeMaceLarge = shape_code(kShapeL2, kShapeSh3, kShapeSh3);
inline constexpr uint32_t kShapeMaceMedium = shape_code(kShapeL1, kShapeSh3, kShapeL2);
// The codes uvu_shape_dispatch serves (build_info()["uvu_shapes"]: Python fuses the backward of these).
inline constexpr uint32_t kCompiledShapes[] = {kShapeMaceLarge, kShapeMaceMedium};

// Runs f(ShapeC<X, Y, O>{}) for a compiled shape code and returns its result; false for any other code.
template <typename F>
inline bool uvu_shape_dispatch(uint32_t code, F&& f) {  // host: the CPU loop and the CUDA launcher
  switch (code) {
    case kShapeMaceLarge: return f(ShapeC<kShapeL2, kShapeSh3, kShapeSh3>{});
    case kShapeMaceMedium: return f(ShapeC<kShapeL1, kShapeSh3, kShapeL2>{});
    default: return false;
  }
}

}  // namespace jbm::core
