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
// A path's work is split into independent "items" (one (u, v) pair for uvu and outer, one
// (u, v, w) triple for uvw); an item adds its contributions through a caller-supplied `add(index, value)`
// so that the CPU loop and the CUDA kernel share this code.
//
// Mode "outer" is internal: the unweighted product of every channel pair, T[k, u·mul2 + v] =
// Σ_ij C_ijk x[u, i] y[v, j], written component-major (a path's output block is the [dim_out, mul1·mul2]
// matrix). A TensorProduct runs its uvw paths as this product followed by a matrix product with the
// weights (jaxbatmobile/_src/tensor_product.py, _UvwGemm): the weights then never pass through a
// per-item loop. Plain products only (no graph calls).
#pragma once

#include "core/common.h"
#include "core/sh.h"

namespace jbm::core {

enum class TpSlot : int32_t { kX = 0, kY = 1, kW = 2, kZ = 3 };
enum class TpMode : int32_t { kUvu = 0, kUvw = 1, kOuter = 2 };
// Which implementation serves a problem: the generic item loop below, or the unrolled channelwise
// one of csrc/core/tp_uvu.h (chosen in Python, where the problem is known; see tp_uvu.h).
enum class TpKernel : int32_t { kGeneric = 0, kUvu = 1 };

// One instruction, flattened (int32 fields, the layout of the Python table in tensor_product.py).
struct TpPath {
  int32_t mode;        // TpMode
  int32_t mul1, mul2, mul_out;  // mul_out: mul1 for uvu, mul1 * mul2 for outer
  int32_t off1, off2, off_out;  // offsets of the irreps blocks in x, y, z rows
  int32_t off_w;       // offset of the path's weights in a weight row, -1 if the path has none
  int32_t dim1, dim2, dim_out;  // 2l+1 of the three irreps
  int32_t cg_begin, cg_end;     // CG entries of the path
  int32_t item_begin;           // first item of the path (items of all paths are numbered together)
};
inline constexpr int kTpPathFields = 14;
static_assert(sizeof(TpPath) == kTpPathFields * sizeof(int32_t), "TpPath must match the Python table");

JBM_HD int64_t tp_path_items(const TpPath& p) {
  return p.mode == static_cast<int32_t>(TpMode::kUvw) ? int64_t(p.mul1) * p.mul2 * p.mul_out
                                                      : int64_t(p.mul1) * p.mul2;
}

// Offset of output channel o of path p in a z row (component k is at + k * tp_z_stride(p)).
JBM_HD bool tp_outer(const TpPath& p) { return p.mode == static_cast<int32_t>(TpMode::kOuter); }
JBM_HD int64_t tp_z_channel(const TpPath& p, int32_t o) {
  return p.off_out + (tp_outer(p) ? int64_t(o) : int64_t(o) * p.dim_out);
}
JBM_HD int64_t tp_z_stride(const TpPath& p) { return tp_outer(p) ? int64_t(p.mul1) * p.mul2 : 1; }

// Contributions of one item of path `p` to the operand in slot SLOT. `cg_ijk` holds 3 ints per entry.
// Pointers x, y, w, z are rows (w may be a shared weight vector); the one of SLOT is not read.
// `pw` is the path's normalisation factor.
template <TpSlot SLOT, typename T, typename Add>
JBM_HD void tp_item(const TpPath& p, int64_t item, T pw, bool with_unweighted, const T* x, const T* y, const T* w,
                    const T* z, const int32_t* cg_ijk, const T* cg_c, Add&& add) {
  int32_t u, v, o;
  int64_t widx;
  if (p.mode != static_cast<int32_t>(TpMode::kUvw)) {
    u = static_cast<int32_t>(item / p.mul2);
    v = static_cast<int32_t>(item % p.mul2);
    o = tp_outer(p) ? static_cast<int32_t>(item) : u;
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
  const int64_t zo = tp_z_channel(p, o), zs = tp_z_stride(p);
  const T wv = pw * ((SLOT != TpSlot::kW && weighted) ? w[widx] : T(1));
  T wsum = T(0);
  for (int32_t e = p.cg_begin; e < p.cg_end; ++e) {
    const int32_t i = cg_ijk[3 * e], j = cg_ijk[3 * e + 1], k = cg_ijk[3 * e + 2];
    const T c = cg_c[e];
    if constexpr (SLOT == TpSlot::kZ) {
      add(zo + k * zs, c * wv * x[xo + i] * y[yo + j]);
    } else if constexpr (SLOT == TpSlot::kX) {
      add(xo + i, c * wv * y[yo + j] * z[zo + k * zs]);
    } else if constexpr (SLOT == TpSlot::kY) {
      add(yo + j, c * wv * x[xo + i] * z[zo + k * zs]);
    } else {
      wsum += c * x[xo + i] * y[yo + j] * z[zo + k * zs];
    }
  }
  if constexpr (SLOT == TpSlot::kW) add(widx, wv * wsum);
}

// Slots z and x, output-stationary: the contribution of path `p` to one element of the block it writes,
// channel `a` (o for z, u for x) and component `comp`, summed over the path's items and CG entries in a
// fixed order — the same terms as tp_item adds, gathered by their target (no atomics: deterministic).
// Graph calls only, so never an outer path (their tables are built for plain products).
template <TpSlot SLOT, typename T>
JBM_HD T tp_path_element(const TpPath& p, int32_t a, int32_t comp, T pw, bool with_unweighted, const T* x,
                         const T* y, const T* w, const T* z, const int32_t* cg_ijk, const T* cg_c) {
  static_assert(SLOT == TpSlot::kZ || SLOT == TpSlot::kX, "output-stationary form of slots z and x only");
  const bool weighted = p.off_w >= 0;
  if (!weighted && !with_unweighted) return T(0);
  const bool uvu = p.mode == static_cast<int32_t>(TpMode::kUvu);
  // uvu: the target channel fixes both u and o; uvw: the other one of them is summed over.
  const int32_t others = uvu ? 1 : SLOT == TpSlot::kZ ? p.mul1 : p.mul_out;
  T sum = T(0);
  for (int32_t b = 0; b < others; ++b) {
    const int32_t u = SLOT == TpSlot::kZ && !uvu ? b : a;
    const int32_t o = SLOT == TpSlot::kX && !uvu ? b : a;
    const T* src = SLOT == TpSlot::kZ ? x + p.off1 + int64_t(u) * p.dim1 : z + p.off_out + int64_t(o) * p.dim_out;
    for (int32_t v = 0; v < p.mul2; ++v) {
      const int64_t uv = int64_t(u) * p.mul2 + v;
      const T wv = weighted ? w[p.off_w + (uvu ? uv : uv * p.mul_out + o)] : T(1);
      const T* yv = y + p.off2 + int64_t(v) * p.dim2;
      T s = T(0);
      for (int32_t e = p.cg_begin; e < p.cg_end; ++e) {
        const int32_t i = cg_ijk[3 * e], j = cg_ijk[3 * e + 1], k = cg_ijk[3 * e + 2];
        if ((SLOT == TpSlot::kZ ? k : i) == comp) s += cg_c[e] * yv[j] * src[SLOT == TpSlot::kZ ? i : k];
      }
      sum += wv * s;
    }
  }
  return pw * sum;
}

// The irreps block path `p` writes in slot SLOT's operand (z: its output block, x: its first input),
// as [begin, begin + channels * dim).
template <TpSlot SLOT>
JBM_HD int32_t tp_target_offset(const TpPath& p) { return SLOT == TpSlot::kZ ? p.off_out : p.off1; }
template <TpSlot SLOT>
JBM_HD int32_t tp_target_dim(const TpPath& p) { return SLOT == TpSlot::kZ ? p.dim_out : p.dim1; }
template <TpSlot SLOT>
JBM_HD int32_t tp_target_channels(const TpPath& p) {
  return SLOT == TpSlot::kX || p.mode == static_cast<int32_t>(TpMode::kUvu) ? p.mul1 : p.mul_out;
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
  // Deterministic scatter (the output slot x or z of a graph call, when seg_offsets is set): the edges
  // of target node n are seg_edges[seg_offsets[n] .. seg_offsets[n+1]) (seg_edges null: the identity),
  // and node n's row is summed by one owner over those edges in that order and stored once — no
  // atomics, the same bits on every run. An edge listed under n whose target is not n is skipped.
  // (The gradient calls of compiled shapes, jbm_tp_grads, walk the edges in the order seg_edges when it
  // is set — the sender-sorted list, so that dx is summed over each sender's run in registers.)
  const int32_t* seg_offsets;
  const int32_t* seg_edges;
  // y computed in the kernel as the spherical harmonics of edge vectors (sh_conv): the y operand is
  // then [rows, 3]. sh_lmax < 0: y is data.
  int32_t sh_lmax;
  bool sh_normalize;
  ShNormalization sh_normalization;
  // Channelwise kernel: elements of one row's y-contracted CG blocks, all paths
  // (sum of uvu_contracted_stride(dim1, dim_out), csrc/core/tp_uvu.h); sizes the GPU's shared memory.
  int32_t yc_width;
  // Long edge lists split across blocks (deterministic scatter on the channelwise GPU kernel): node n's
  // list is cut into 1 + q(n) pieces of near-equal length, seg_pieces[n] = q(0) + ... + q(n-1)
  // ([nodes + 1]; null: one piece per node). Piece 0 writes the node's row, piece j > 0 the row
  // seg_pieces[n] + j - 1 of seg_scratch ([seg_scratch_rows, out_width()], the operands' dtype), and a
  // second pass adds those rows to the node's in order: still one fixed order, but a padding node with
  // hundreds of edges no longer holds one block for the whole kernel.
  const int32_t* seg_pieces = nullptr;
  void* seg_scratch = nullptr;
  int64_t seg_scratch_rows = 0;
  // Channelwise problems whose irreps and instructions are fixed at compile time up to the multiplicity
  // (csrc/core/tp_uvu_shape.h): their code, X | Y << 8 | O << 16; 0 for any other problem.
  uint32_t uvu_shape = 0;
  JBM_HD bool segmented() const { return seg_offsets != nullptr && scatters(); }
  JBM_HD int64_t y_width() const { return sh_lmax >= 0 ? 3 : dim_y; }
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
  // Segmented calls: edge e's rows, if it is valid and its target (receiver for z, sender for x) is n;
  // `source` is then the row of the gathered operand (x's for z, z's for x).
  JBM_HD bool segment_edge(int64_t e, int64_t n, int64_t* rx, int64_t* rz) const {
    if (e < 0 || e >= rows || !edge_rows(e, rx, rz)) return false;
    return (slot == TpSlot::kZ ? *rz : *rx) == n;
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

// The node-feature gradient of a graph's gradient call (jbm_tp_grads), taken in the order of the sender
// lists (TpCall::seg_offsets / seg_edges). Deterministic: each sender's list is summed by its owner in
// that order and stored, long lists split into pieces as a slot-x call's (TpCall::seg_pieces /
// seg_scratch); otherwise added with atomic adds once per run of one sender.
struct DxLists {
  bool deterministic = false;
  const int32_t* seg_pieces = nullptr;
  void* seg_scratch = nullptr;
  int64_t seg_scratch_rows = 0;
};

// Call c reading y as `from` does: data, or edge vectors whose spherical harmonics are computed (the
// fused y and weight gradients run the y call's slot with the weight call's view of y).
JBM_HD TpCall with_sh_of(TpCall c, const TpCall& from) {
  c.sh_lmax = from.sh_lmax;
  c.sh_normalize = from.sh_normalize;
  c.sh_normalization = from.sh_normalization;
  return c;
}

// y row of one row in a call with sh_lmax >= 0: the spherical harmonics of the vector v[0..3)
// (degrees 0..sh_lmax, at most kTpShMaxL; csrc/core/sh.h).
inline constexpr int kTpShMaxL = 4;
template <typename T>
JBM_HD void tp_sh_row(const TpCall& c, const T* v, T* y) {
  switch (c.sh_lmax) {
    case 0: return sh_values<0>(v, c.sh_normalize, c.sh_normalization, y);
    case 1: return sh_values<1>(v, c.sh_normalize, c.sh_normalization, y);
    case 2: return sh_values<2>(v, c.sh_normalize, c.sh_normalization, y);
    case 3: return sh_values<3>(v, c.sh_normalize, c.sh_normalization, y);
    default: return sh_values<4>(v, c.sh_normalize, c.sh_normalization, y);
  }
}

// Index of the path holding `item` (paths are few; a linear scan is cheap next to the item's work).
JBM_HD int32_t tp_find_path(const TpPath* paths, int32_t num_paths, int64_t item) {
  int32_t p = 0;
  while (p + 1 < num_paths && paths[p + 1].item_begin <= item) ++p;
  return p;
}

}  // namespace jbm::core
