// Clebsch-Gordan tensor product: one contraction for the output and every derivative.
//
// The weighted TP is the 4-linear form  T(x, y, w, z) = sum over paths, channels and CG entries of
//   c * x[i] * y[j] * w[p] * z[k],
// and each "slot" call returns the gradient of T with respect to one operand given the other three:
// slot z is the forward product, slots x, y, w its transposes (backward), and since every derivative
// of a multilinear map is again such a gradient, every derivative of every order is one of these calls
// (csrc/../jaxbatmobile/_src/tensor_product.py wires them).
//
// A problem is a table of paths (TpPath), a list of CG entries and one normalisation factor per path
// (its "path weight", e3nn's path/irrep normalisation). Paths without weights contribute c·x·y·z:
// that part does not depend on w, so a call whose w operand is a tangent (not the weights) must leave
// it out (TpCall::with_unweighted).
// A path's work is split into independent "items" (one (u, v) pair for uvu, one
// (u, v, w) triple for uvw); an item adds its contributions through a caller-supplied `add(index, value)`
// so that the CPU loop and the CUDA kernel share this code.
#pragma once

#include "core/common.h"

namespace jbm::core {

enum class TpSlot : int32_t { kX = 0, kY = 1, kW = 2, kZ = 3 };
enum class TpMode : int32_t { kUvu = 0, kUvw = 1 };
// Which implementation serves a problem: the generic item loop below, or the unrolled channelwise
// one of csrc/core/tp_uvu.h (chosen in Python, where the problem is known; see tp_uvu.h).
enum class TpKernel : int32_t { kGeneric = 0, kUvu = 1 };

// One instruction, flattened (int32 fields, the layout of the Python table in tensor_product.py).
struct TpPath {
  int32_t mode;        // TpMode
  int32_t mul1, mul2, mul_out;
  int32_t off1, off2, off_out;  // offsets of the irreps blocks in x, y, z rows
  int32_t off_w;       // offset of the path's weights in a weight row, -1 if the path has none
  int32_t dim1, dim2, dim_out;  // 2l+1 of the three irreps
  int32_t cg_begin, cg_end;     // CG entries of the path
  int32_t item_begin;           // first item of the path (items of all paths are numbered together)
};
inline constexpr int kTpPathFields = 14;
static_assert(sizeof(TpPath) == kTpPathFields * sizeof(int32_t), "TpPath must match the Python table");

JBM_HD int64_t tp_path_items(const TpPath& p) {
  return p.mode == static_cast<int32_t>(TpMode::kUvu) ? int64_t(p.mul1) * p.mul2
                                                      : int64_t(p.mul1) * p.mul2 * p.mul_out;
}

// Contributions of one item of path `p` to the operand in slot SLOT. `cg_ijk` holds 3 ints per entry.
// Pointers x, y, w, z are rows (w may be a shared weight vector); the one of SLOT is not read.
// `pw` is the path's normalisation factor.
template <TpSlot SLOT, typename T, typename Add>
JBM_HD void tp_item(const TpPath& p, int64_t item, T pw, bool with_unweighted, const T* x, const T* y, const T* w,
                    const T* z, const int32_t* cg_ijk, const T* cg_c, Add&& add) {
  int32_t u, v, o;
  int64_t widx;
  if (p.mode == static_cast<int32_t>(TpMode::kUvu)) {
    u = static_cast<int32_t>(item / p.mul2);
    v = static_cast<int32_t>(item % p.mul2);
    o = u;
    widx = int64_t(u) * p.mul2 + v;
  } else {
    o = static_cast<int32_t>(item % p.mul_out);
    const int64_t uv = item / p.mul_out;
    u = static_cast<int32_t>(uv / p.mul2);
    v = static_cast<int32_t>(uv % p.mul2);
    widx = uv * p.mul_out + o;
  }
  const bool weighted = p.off_w >= 0;
  if (!weighted && (SLOT == TpSlot::kW || !with_unweighted)) return;
  widx += p.off_w;
  const int32_t xo = p.off1 + u * p.dim1;
  const int32_t yo = p.off2 + v * p.dim2;
  const int32_t zo = p.off_out + o * p.dim_out;
  const T wv = pw * ((SLOT != TpSlot::kW && weighted) ? w[widx] : T(1));
  T wsum = T(0);
  for (int32_t e = p.cg_begin; e < p.cg_end; ++e) {
    const int32_t i = cg_ijk[3 * e], j = cg_ijk[3 * e + 1], k = cg_ijk[3 * e + 2];
    const T c = cg_c[e];
    if constexpr (SLOT == TpSlot::kZ) {
      add(zo + k, c * wv * x[xo + i] * y[yo + j]);
    } else if constexpr (SLOT == TpSlot::kX) {
      add(xo + i, c * wv * y[yo + j] * z[zo + k]);
    } else if constexpr (SLOT == TpSlot::kY) {
      add(yo + j, c * wv * x[xo + i] * z[zo + k]);
    } else {
      wsum += c * x[xo + i] * y[yo + j] * z[zo + k];
    }
  }
  if constexpr (SLOT == TpSlot::kW) add(widx, wv * wsum);
}

// What one call computes (everything but the data pointers).
struct TpCall {
  TpSlot slot;
  int64_t rows;        // batch rows
  int32_t num_paths;
  int64_t num_items;   // items over all paths
  int32_t dim_x, dim_y, dim_z, num_w;  // row widths of the four operands
  bool shared_w;       // weights are one vector for all rows (else one row each)
  bool with_unweighted;  // include the paths without weights (false when w holds a tangent)
  TpKernel kernel;
  int32_t zero_fill;     // bit s: some elements of operand s are written by no path (start from zero)
  // Graph calls (the fused convolution): rows are edges; x rows are gathered by sender and z rows by
  // receiver from arrays of `nodes` rows, so an output in slot x or z is a scatter-sum over edges.
  // nodes < 0: a plain row-wise product.
  int64_t nodes;
  const int32_t* senders;
  const int32_t* receivers;
  JBM_HD bool scatters() const { return nodes >= 0 && (slot == TpSlot::kX || slot == TpSlot::kZ); }
  JBM_HD int64_t out_rows() const { return reduces_rows() ? 1 : scatters() ? nodes : rows; }
  // Rows of x and z used by row r; false for an edge with an index outside [0, nodes), which is
  // dropped (contributes nothing): memory-safe behaviour for bad indices.
  JBM_HD bool edge_rows(int64_t r, int64_t* rx, int64_t* rz) const {
    if (nodes < 0) {
      *rx = *rz = r;
      return true;
    }
    *rx = senders[r];
    *rz = receivers[r];
    return *rx >= 0 && *rx < nodes && *rz >= 0 && *rz < nodes;
  }
  // Row of the output written by row r (given its x and z rows).
  JBM_HD int64_t out_row(int64_t r, int64_t rx, int64_t rz) const {
    return !scatters() ? r : slot == TpSlot::kX ? rx : rz;
  }
  JBM_HD int64_t out_width() const {
    switch (slot) {
      case TpSlot::kX: return dim_x;
      case TpSlot::kY: return dim_y;
      case TpSlot::kW: return num_w;
      default: return dim_z;
    }
  }
  // The output is one vector summed over rows (the gradient of shared weights).
  JBM_HD bool reduces_rows() const { return slot == TpSlot::kW && shared_w; }
};

// Index of the path holding `item` (paths are few; a linear scan is cheap next to the item's work).
JBM_HD int32_t tp_find_path(const TpPath* paths, int32_t num_paths, int64_t item) {
  int32_t p = 0;
  while (p + 1 < num_paths && paths[p + 1].item_begin <= item) ++p;
  return p;
}

}  // namespace jbm::core
