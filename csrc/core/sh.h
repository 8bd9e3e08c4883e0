// Spherical harmonics of one vector, and their first derivatives, exactly as e3nn-jax defines them.
//
// The polynomials themselves are generated (generated/sh_polynomials.h); this file adds the
// normalization of the input vector, the per-degree output normalization, and the chain rule through
// the normalization for J·dv and Jᵀ·g.  Everything is unrolled over the compile-time degree LMAX.
#pragma once

#include <type_traits>

#include "core/common.h"
#include "core/generated/sh_polynomials.h"

namespace jbm::core {

JBM_HD constexpr int sh_dim(int lmax) { return (lmax + 1) * (lmax + 1); }

// What one call computes. fwd: Y = sh(v);  jvp: dY = J(v) dv;  vjp: gv = J(v)ᵀ g.
enum class ShMode { kFwd, kJvp, kVjp };

struct ShCall {
  ShMode mode;
  int64_t n;  // number of vectors
  int lmax;
  bool normalize;
  ShNormalization normalization;
};

// Powers x^k, y^k, z^k for k = 0..N, kept in registers (indexed only with compile-time constants).
template <int N, typename T> struct Powers {
  T x[N + 1], y[N + 1], z[N + 1];
  JBM_HD Powers(T ux, T uy, T uz) {
    x[0] = y[0] = z[0] = T(1);
#pragma unroll
    for (int k = 1; k <= N; ++k) {
      x[k] = x[k - 1] * ux;
      y[k] = y[k - 1] * uy;
      z[k] = z[k - 1] * uz;
    }
  }
};

// Output scale of degree l relative to e3nn's "component" normalization.
template <typename T> JBM_HD T sh_degree_scale(int l, ShNormalization normalization) {
  switch (normalization) {
    case ShNormalization::kNorm: return T(1) / sqrt(T(2 * l + 1));
    case ShNormalization::kIntegral: return T(0.28209479177387814);  // 1/sqrt(4*pi)
    default: return T(1);
  }
}

// The point the polynomials are evaluated at. With normalize, u = v/|v|, where |v| is taken as 1 for
// the zero vector (e3nn-jax's rule: Y(0) = [1, 0, ...] and a finite Jacobian), else u = v.
// inv_norm is 1/|v| (or 1), needed by the chain rule.
template <typename T> struct ShPoint {
  T u[3];
  T inv_norm;
  JBM_HD ShPoint(const T* v, bool normalize) {
    inv_norm = T(1);
    if (normalize) {
      const T r2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
      inv_norm = r2 == T(0) ? T(1) : T(1) / sqrt(r2);
    }
    u[0] = v[0] * inv_norm;
    u[1] = v[1] * inv_norm;
    u[2] = v[2] * inv_norm;
  }
  // du = P dv with P = (I - u uᵀ)/|v| when normalizing (symmetric, so it serves J·dv and Jᵀ·g), else I.
  JBM_HD void project(const T* d, bool normalize, T* out) const {
    T dot = normalize ? u[0] * d[0] + u[1] * d[1] + u[2] * d[2] : T(0);
#pragma unroll
    for (int k = 0; k < 3; ++k) out[k] = (d[k] - u[k] * dot) * inv_norm;
  }
};

template <int L, int LMAX> struct ShLoop {
  // y[(l+1)^2 .. ] for degrees L..LMAX.
  template <typename T, typename P>
  JBM_HD static void values(const P& p, ShNormalization nrm, T* y) {
    constexpr int off = L * L;
    ShDegree<L>::template value<T>(p, y + off);
    const T s = sh_degree_scale<T>(L, nrm);
#pragma unroll
    for (int m = 0; m < 2 * L + 1; ++m) y[off + m] *= s;
    if constexpr (L < LMAX) ShLoop<L + 1, LMAX>::template values<T>(p, nrm, y);
  }
  // dy = J du for degrees L..LMAX.
  template <typename T, typename P>
  JBM_HD static void jvp(const P& p, ShNormalization nrm, const T* du, T* dy) {
    constexpr int off = L * L;
    T jac[2 * L + 1][3];
    ShDegree<L>::template jacobian<T>(p, jac);
    const T s = sh_degree_scale<T>(L, nrm);
#pragma unroll
    for (int m = 0; m < 2 * L + 1; ++m)
      dy[off + m] = s * (jac[m][0] * du[0] + jac[m][1] * du[1] + jac[m][2] * du[2]);
    if constexpr (L < LMAX) ShLoop<L + 1, LMAX>::template jvp<T>(p, nrm, du, dy);
  }
  // gu += Jᵀ g for degrees L..LMAX.
  template <typename T, typename P>
  JBM_HD static void vjp(const P& p, ShNormalization nrm, const T* g, T* gu) {
    constexpr int off = L * L;
    T jac[2 * L + 1][3];
    ShDegree<L>::template jacobian<T>(p, jac);
    const T s = sh_degree_scale<T>(L, nrm);
#pragma unroll
    for (int m = 0; m < 2 * L + 1; ++m) {
      const T gs = g[off + m] * s;
      gu[0] += jac[m][0] * gs;
      gu[1] += jac[m][1] * gs;
      gu[2] += jac[m][2] * gs;
    }
    if constexpr (L < LMAX) ShLoop<L + 1, LMAX>::template vjp<T>(p, nrm, g, gu);
  }
};

// y[0 .. (LMAX+1)^2) = Y(v)
template <int LMAX, typename T>
JBM_HD void sh_values(const T* v, bool normalize, ShNormalization nrm, T* y) {
  const ShPoint<T> pt(v, normalize);
  const Powers<LMAX, T> p(pt.u[0], pt.u[1], pt.u[2]);
  ShLoop<0, LMAX>::template values<T>(p, nrm, y);
}

// dy = (dY/dv) dv
template <int LMAX, typename T>
JBM_HD void sh_jvp(const T* v, const T* dv, bool normalize, ShNormalization nrm, T* dy) {
  const ShPoint<T> pt(v, normalize);
  const Powers<LMAX, T> p(pt.u[0], pt.u[1], pt.u[2]);
  T du[3];
  pt.project(dv, normalize, du);
  ShLoop<0, LMAX>::template jvp<T>(p, nrm, du, dy);
}

// gv = (dY/dv)ᵀ g
template <int LMAX, typename T>
JBM_HD void sh_vjp(const T* v, const T* g, bool normalize, ShNormalization nrm, T* gv) {
  const ShPoint<T> pt(v, normalize);
  const Powers<LMAX, T> p(pt.u[0], pt.u[1], pt.u[2]);
  T gu[3] = {T(0), T(0), T(0)};
  ShLoop<0, LMAX>::template vjp<T>(p, nrm, g, gu);
  pt.project(gu, normalize, gv);
}

// Calls f(std::integral_constant<int, L>{}) with L equal to the run-time lmax (0..kShMaxL).
// Returns false, calling nothing, when lmax is out of range. Host code only.
template <int L = 0, typename F> bool dispatch_lmax(int lmax, F&& f) {
  if (lmax == L) {
    f(std::integral_constant<int, L>{});
    return true;
  }
  if constexpr (L < kShMaxL) {
    return dispatch_lmax<L + 1>(lmax, f);
  } else {
    return false;
  }
}

}  // namespace jbm::core
