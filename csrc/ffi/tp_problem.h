// Validation of a tensor-product call, shared by the CPU and CUDA handlers.
//
// Operands: the three slots other than the output slot, in slot order (x, y, w, z); the graph's
// senders and receivers (int32[E], empty for a plain product); the deterministic scatter's edge lists,
// seg_offsets int32[num_nodes + 1] and seg_edges int32[E] (both may be empty: see core::TpCall), and the
// split of long lists, seg_pieces int32[num_nodes + 1] (may be empty); the
// problem tables: paths int32[P, 14], cg_ijk int32[C, 3], cg_c T[C], path_weight T[P]. Attributes:
// slot, shared_w, with_unweighted, widths, kernel (core::TpKernel), zero_fill, num_nodes (-1 for a
// plain product), sh_lmax / sh_normalize / sh_normalization (y from edge vectors; sh_lmax -1: y is data),
// yc_width (core::TpCall). Results: the output, then (jbm_tp) the scratch rows of split edge lists,
// T[R * out_width] (R may be 0; the GPU kernel writes rows below R only).
#pragma once

#include <array>

#include "core/tp_uvu.h"
#include "ffi/common.h"

namespace jbm {

inline constexpr const char* kTpOp = "jbm_tp";

struct TpBuffers {
  std::array<const xla::ffi::AnyBuffer*, 4> ops{};  // by slot; nullptr for the output slot
};

inline xla::ffi::Error check_tp(const xla::ffi::AnyBuffer& a, const xla::ffi::AnyBuffer& b,
                                const xla::ffi::AnyBuffer& c, const xla::ffi::AnyBuffer& senders,
                                const xla::ffi::AnyBuffer& receivers, const xla::ffi::AnyBuffer& seg_offsets,
                                const xla::ffi::AnyBuffer& seg_edges, const xla::ffi::AnyBuffer& seg_pieces,
                                const xla::ffi::AnyBuffer* scratch, const xla::ffi::AnyBuffer& paths,
                                const xla::ffi::AnyBuffer& cg_ijk, const xla::ffi::AnyBuffer& cg_c,
                                const xla::ffi::AnyBuffer& path_weight, const xla::ffi::AnyBuffer* out, int32_t slot,
                                int32_t shared_w, int32_t with_unweighted, int32_t dim_x, int32_t dim_y, int32_t dim_z,
                                int32_t num_w, int64_t num_items, int32_t kernel, int32_t zero_fill, int64_t num_nodes,
                                int32_t sh_lmax, int32_t sh_normalize, int32_t sh_normalization, int32_t yc_width,
                                TpBuffers* bufs,
                                core::TpCall* out_call) {
  using ffi_util::invalid;
  namespace ffi = xla::ffi;
  if (slot < 0 || slot > 3) return invalid("slot of ", kTpOp, " must be in [0, 3], got ", slot);
  // kernel: core::TpKernel in bits 0-3; for the channelwise kernel, bits 4-27 may hold the problem's
  // shape code (TpCall::uvu_shape, csrc/core/tp_uvu_shape.h).
  const int32_t kernel_kind = kernel & 0xF, uvu_shape = kernel >> 4;
  if (kernel < 0 || kernel_kind > 1 || (uvu_shape != 0 && kernel_kind != 1) || uvu_shape >= (1 << 24))
    return invalid("kernel of ", kTpOp, " must be 0, 1 or 1 | shape << 4, got ", kernel);
  const char* names[4] = {"x", "y", "weights", "z"};
  const ffi::AnyBuffer* in[3] = {&a, &b, &c};
  for (int s = 0, k = 0; s < 4; ++s) bufs->ops[s] = s == slot ? nullptr : in[k++];
  const ffi::DataType dt = a.element_type();
  if (!ffi_util::is_supported_float(dt))
    return invalid("operands of ", kTpOp, " must be float32 or float64, got ", ffi_util::dtype_name(dt));
  for (int s = 0; s < 4; ++s) {
    const ffi::AnyBuffer* buf = s == slot ? out : bufs->ops[s];
    if (buf != nullptr && buf->element_type() != dt)
      return invalid(names[s], " of ", kTpOp, " has dtype ", ffi_util::dtype_name(buf->element_type()),
                    ", expected ", ffi_util::dtype_name(dt));
  }
  if (cg_c.element_type() != dt || path_weight.element_type() != dt)
    return invalid("CG coefficients and path weights of ", kTpOp, " must have the operands' dtype");
  if (paths.element_type() != ffi::DataType::S32 || cg_ijk.element_type() != ffi::DataType::S32)
    return invalid("path and CG index tables of ", kTpOp, " must be int32");
  if (paths.element_count() % core::kTpPathFields != 0)
    return invalid("path table of ", kTpOp, " must have ", core::kTpPathFields, " columns");
  const int64_t num_cg = static_cast<int64_t>(cg_c.element_count());
  if (static_cast<int64_t>(cg_ijk.element_count()) != 3 * num_cg)
    return invalid("CG index table of ", kTpOp, " must have 3 columns and one row per coefficient");
  if (dim_x <= 0 || dim_y <= 0 || dim_z <= 0 || num_w < 0 || num_items < 0)
    return invalid("invalid operand widths for ", kTpOp);

  if (sh_lmax >= 0) {
    if (sh_lmax > core::kTpShMaxL || dim_y != core::sh_dim(sh_lmax))
      return invalid("sh_lmax of ", kTpOp, " must be in [0, ", core::kTpShMaxL, "] with dim_y = (sh_lmax + 1)^2, got ",
                     sh_lmax, " and ", dim_y);
    if (slot == static_cast<int32_t>(core::TpSlot::kY))
      return invalid(kTpOp, " cannot return the y gradient of spherical harmonics computed in the kernel");
    if (sh_normalization < 0 || sh_normalization > 2)
      return invalid("sh_normalization of ", kTpOp, " must be 0, 1 or 2, got ", sh_normalization);
  }
  core::TpCall call{static_cast<core::TpSlot>(slot), 0,
                    static_cast<int32_t>(paths.element_count() / core::kTpPathFields), num_items,
                    dim_x, dim_y, dim_z, num_w, shared_w != 0, with_unweighted != 0,
                    static_cast<core::TpKernel>(kernel_kind), zero_fill, num_nodes, nullptr, nullptr, nullptr, nullptr,
                    sh_lmax < 0 ? -1 : sh_lmax, sh_normalize != 0, static_cast<core::ShNormalization>(sh_normalization),
                    yc_width};
  call.uvu_shape = static_cast<uint32_t>(uvu_shape);
  if (yc_width < 0) return invalid("yc_width of ", kTpOp, " must be non-negative, got ", yc_width);
  if (static_cast<int64_t>(path_weight.element_count()) != call.num_paths)
    return invalid("path weights of ", kTpOp, " must have one entry per path");
  const int64_t widths[4] = {dim_x, call.y_width(), num_w, dim_z};
  const bool graph = num_nodes >= 0;
  if (senders.element_type() != ffi::DataType::S32 || receivers.element_type() != ffi::DataType::S32)
    return invalid("senders and receivers of ", kTpOp, " must be int32");
  if (graph) {
    // Rows are edges; x and z have one row per node.
    call.rows = static_cast<int64_t>(senders.element_count());
    if (static_cast<int64_t>(receivers.element_count()) != call.rows)
      return invalid("senders and receivers of ", kTpOp, " must have one entry per edge, got ",
                     senders.element_count(), " and ", receivers.element_count());
    call.senders = static_cast<const int32_t*>(senders.untyped_data());
    call.receivers = static_cast<const int32_t*>(receivers.untyped_data());
    if (seg_offsets.element_type() != ffi::DataType::S32 || seg_edges.element_type() != ffi::DataType::S32)
      return invalid("edge lists of ", kTpOp, " must be int32");
    if (seg_offsets.element_count() != 0) {
      if (static_cast<int64_t>(seg_offsets.element_count()) != num_nodes + 1)
        return invalid("seg_offsets of ", kTpOp, " must have num_nodes + 1 = ", num_nodes + 1, " entries, got ",
                       seg_offsets.element_count());
      call.seg_offsets = static_cast<const int32_t*>(seg_offsets.untyped_data());
    }
    if (seg_edges.element_count() != 0) {
      if (static_cast<int64_t>(seg_edges.element_count()) != call.rows || call.seg_offsets == nullptr)
        return invalid("seg_edges of ", kTpOp, " must have one entry per edge, with seg_offsets");
      call.seg_edges = static_cast<const int32_t*>(seg_edges.untyped_data());
    }
    if (seg_pieces.element_count() != 0) {
      if (seg_pieces.element_type() != ffi::DataType::S32 || call.seg_offsets == nullptr ||
          static_cast<int64_t>(seg_pieces.element_count()) != num_nodes + 1)
        return invalid("seg_pieces of ", kTpOp, " must be int32[num_nodes + 1], with seg_offsets");
      call.seg_pieces = static_cast<const int32_t*>(seg_pieces.untyped_data());
    }
  } else {
    if (seg_offsets.element_count() != 0 || seg_edges.element_count() != 0 || seg_pieces.element_count() != 0)
      return invalid("edge lists of ", kTpOp, " must be empty without num_nodes");
    if (senders.element_count() != 0 || receivers.element_count() != 0)
      return invalid("senders and receivers of ", kTpOp, " must be empty without num_nodes");
    // Rows come from x (or y when x is the output).
    const int rows_slot = slot == 0 ? 1 : 0;
    call.rows = static_cast<int64_t>(bufs->ops[rows_slot]->element_count()) / widths[rows_slot];
  }
  for (int s = 0; s < 4; ++s) {
    const ffi::AnyBuffer* buf = s == slot ? out : bufs->ops[s];
    if (buf == nullptr) continue;  // an output not asked for (jbm_tp_grads)
    const bool shared = s == 2 && call.shared_w;
    const int64_t rows = graph && (s == 0 || s == 3) ? num_nodes : call.rows;
    const int64_t expected = shared ? num_w : rows * widths[s];
    if (static_cast<int64_t>(buf->element_count()) != expected)
      return invalid("invalid size of ", names[s], s == slot ? " (output)" : "", " for ", kTpOp, ": expected ",
                    expected, " elements, got ", buf->element_count());
  }
  if (scratch != nullptr && scratch->element_count() != 0) {
    if (scratch->element_type() != dt || scratch->element_count() % call.out_width() != 0)
      return invalid("scratch of ", kTpOp, " must be rows of the output's width and dtype");
    call.seg_scratch = scratch->untyped_data();
    call.seg_scratch_rows = static_cast<int64_t>(scratch->element_count()) / call.out_width();
  }
  *out_call = call;
  return ffi::Error::Success();
}

// Checks the deterministic scatter's edge lists (CPU only, where they are host memory; the GPU kernels
// clamp offsets and skip out-of-range entries instead): offsets non-decreasing within [0, rows].
inline xla::ffi::Error check_tp_segments(const core::TpCall& c) {
  if (!c.seg_offsets) return xla::ffi::Error::Success();
  int64_t prev = 0;
  for (int64_t n = 0; n <= c.nodes; ++n) {
    const int64_t k = c.seg_offsets[n];
    if (k < prev || k > c.rows || (n == 0 && k != 0))
      return ffi_util::invalid("seg_offsets of ", kTpOp, " must rise from 0 to at most the edge count");
    prev = k;
  }
  return xla::ffi::Error::Success();
}

// Checks the path table against the widths (CPU only: on the GPU the table lives in device memory and
// comes from our own Python code, which the CPU tests check through this function).
inline xla::ffi::Error check_tp_paths(const core::TpCall& c, const core::TpPath* paths, const int32_t* cg_ijk,
                                      int64_t num_cg) {
  int64_t items = 0, yc_width = 0;
  for (int32_t i = 0; i < c.num_paths; ++i) {
    const core::TpPath& p = paths[i];
    const bool ok =
        (p.mode == 0 || p.mode == 1 || p.mode == 2) && p.mul1 > 0 && p.mul2 > 0 && p.mul_out > 0 &&
        (p.mode != 2 || (int64_t(p.mul_out) == int64_t(p.mul1) * p.mul2 && p.off_w < 0 && c.nodes < 0)) &&
        p.off1 >= 0 && p.off1 + int64_t(p.mul1) * p.dim1 <= c.dim_x &&
        p.off2 >= 0 && p.off2 + int64_t(p.mul2) * p.dim2 <= c.dim_y &&
        p.off_out >= 0 && p.off_out + int64_t(p.mode == 0 ? p.mul1 : p.mul_out) * p.dim_out <= c.dim_z &&
        (p.off_w < 0 || p.off_w + core::tp_path_items(p) <= c.num_w) && p.cg_begin >= 0 &&
        p.cg_begin <= p.cg_end && p.cg_end <= num_cg && p.item_begin == items;
    if (!ok) return ffi_util::invalid("path ", i, " of ", kTpOp, " does not fit the operand widths");
    // The unrolled kernel reads 2l+1 values per irrep from compile-time degrees: hold it to its domain.
    const auto small = [](int32_t dim) { return dim % 2 == 1 && dim <= 2 * core::kCgMaxL + 1; };
    if (c.kernel == core::TpKernel::kUvu &&
        !(p.mode == 0 && p.mul2 == 1 && small(p.dim1) && small(p.dim2) && small(p.dim_out)))
      return ffi_util::invalid("path ", i, " of ", kTpOp, " is not served by the channelwise kernel");
    for (int32_t e = p.cg_begin; e < p.cg_end; ++e)
      if (cg_ijk[3 * e] < 0 || cg_ijk[3 * e] >= p.dim1 || cg_ijk[3 * e + 1] < 0 || cg_ijk[3 * e + 1] >= p.dim2 ||
          cg_ijk[3 * e + 2] < 0 || cg_ijk[3 * e + 2] >= p.dim_out)
        return ffi_util::invalid("CG entry ", e, " of ", kTpOp, " is out of range");
    // The channelwise kernel sums the paths writing one irrep block over a run of consecutive paths.
    if (c.kernel == core::TpKernel::kUvu && (c.slot == core::TpSlot::kZ || c.slot == core::TpSlot::kX)) {
      const auto target = [&c](const core::TpPath& q) { return c.slot == core::TpSlot::kZ ? q.off_out : q.off1; };
      for (int32_t j = 0; j + 1 < i; ++j)
        if (target(paths[j]) == target(p) && target(paths[i - 1]) != target(p))
          return ffi_util::invalid("paths of ", kTpOp, " are not grouped by the block they write");
    }
    items += core::tp_path_items(p);
    yc_width += core::uvu_contracted_stride(p.dim1, p.dim_out);
  }
  if (items != c.num_items) return ffi_util::invalid("item count of ", kTpOp, " does not match its paths");
  if (c.kernel == core::TpKernel::kUvu && yc_width != c.yc_width)
    return ffi_util::invalid("yc_width of ", kTpOp, " does not match its paths: ", c.yc_width, " for ", yc_width);
  return xla::ffi::Error::Success();
}

// The gradients of slot z's operands in one pass (target jbm_tp_grads): operands x, y, w, z (z: the
// output's cotangent; per-row weights), results dy, dw and dx, each empty when not asked for, validated
// as the calls they replace: slot y from (x, w, z), slot w from (x, y, z), slot x from (y, w, z). y may be
// edge vectors (sh_lmax >= 0): dw and dx read them; dy is the gradient with respect to y's values (the
// spherical harmonics). dx has x's shape: [rows, dim_x], or [num_nodes, dim_x] for a graph call (summed
// over each sender's edges, taken in the order of the sender lists seg_offsets / seg_edges). With
// `deterministic` set, dx is summed per sender in a fixed order and stored, not added atomically (the
// sender lists are then required; seg_pieces and the scratch result split long lists as in jbm_tp;
// returned in *dx_lists). Any set other than {dy, dw} is served for products of a compiled shape only
// (csrc/core/tp_uvu_shape.h); Python asks for one only then (tensor_product.py, _fused_grads).
inline constexpr const char* kTpGradsOp = "jbm_tp_grads";

inline xla::ffi::Error check_tp_grads(const xla::ffi::AnyBuffer& x, const xla::ffi::AnyBuffer& y,
                                      const xla::ffi::AnyBuffer& w, const xla::ffi::AnyBuffer& z,
                                      const xla::ffi::AnyBuffer& senders, const xla::ffi::AnyBuffer& receivers,
                                      const xla::ffi::AnyBuffer& seg_offsets, const xla::ffi::AnyBuffer& seg_edges,
                                      const xla::ffi::AnyBuffer& seg_pieces, const xla::ffi::AnyBuffer& paths,
                                      const xla::ffi::AnyBuffer& cg_ijk, const xla::ffi::AnyBuffer& cg_c,
                                      const xla::ffi::AnyBuffer& path_weight, const xla::ffi::AnyBuffer& dy,
                                      const xla::ffi::AnyBuffer& dw, const xla::ffi::AnyBuffer& dx,
                                      xla::ffi::AnyBuffer& scratch, int32_t deterministic, int32_t shared_w,
                                      int32_t with_unweighted, int32_t dim_x, int32_t dim_y, int32_t dim_z,
                                      int32_t num_w, int64_t num_items, int32_t kernel, int32_t zero_fill,
                                      int64_t num_nodes, int32_t sh_lmax,
                                      int32_t sh_normalize, int32_t sh_normalization, int32_t yc_width,
                                      TpBuffers* bufs_y, core::TpCall* call_y, TpBuffers* bufs_w,
                                      core::TpCall* call_w, core::DxLists* dx_lists) {
  if (shared_w) return ffi_util::invalid(kTpGradsOp, " needs per-row weights (shared_w = 0)");
  // Edge lists (graph calls; check_tp checks their sizes): the order the edges are taken in, the senders'
  // when dx is asked for (its sums run over each sender's edges); else empty.
  const auto asked = [](const xla::ffi::AnyBuffer& r) { return r.element_count() != 0 ? &r : nullptr; };
  // (seg_offsets stands in for seg_pieces here, dropped below: dx's pieces are checked at the end.)
  xla::ffi::Error error = check_tp(x, w, z, senders, receivers, seg_offsets, seg_edges, seg_offsets, nullptr, paths,
                                   cg_ijk, cg_c, path_weight, asked(dy), static_cast<int32_t>(core::TpSlot::kY),
                                   shared_w, with_unweighted, dim_x, dim_y, dim_z, num_w, num_items, kernel, zero_fill,
                                   num_nodes, -1, 0, 0, yc_width, bufs_y, call_y);
  if (error.failure()) return error;
  error = check_tp(x, y, z, senders, receivers, seg_offsets, seg_edges, seg_offsets, nullptr, paths, cg_ijk, cg_c,
                   path_weight, asked(dw), static_cast<int32_t>(core::TpSlot::kW), shared_w, 0, dim_x, dim_y, dim_z,
                   num_w, num_items, kernel, zero_fill, num_nodes, sh_lmax, sh_normalize, sh_normalization, yc_width,
                   bufs_w, call_w);
  call_y->seg_pieces = call_w->seg_pieces = nullptr;
  if (error.failure() || dx.element_count() == 0) return error;
  if (call_y->uvu_shape == 0)
    return ffi_util::invalid("dx of ", kTpGradsOp, " is computed for products of a compiled shape only");
  const int64_t dx_rows = num_nodes >= 0 ? num_nodes : call_y->rows;
  if (dx.element_type() != x.element_type() || static_cast<int64_t>(dx.element_count()) != dx_rows * dim_x)
    return ffi_util::invalid("dx (output) of ", kTpGradsOp, " must have x's dtype and shape, or be empty");
  if (!deterministic || num_nodes < 0) return error;
  if (call_y->rows > 0 && call_y->seg_edges == nullptr)  // (E = 0: the lists are empty)
    return ffi_util::invalid("the deterministic dx of ", kTpGradsOp, " needs the sender lists seg_offsets / seg_edges");
  dx_lists->deterministic = true;
  if (seg_pieces.element_count() != 0) {
    if (seg_pieces.element_type() != xla::ffi::DataType::S32 ||
        static_cast<int64_t>(seg_pieces.element_count()) != num_nodes + 1)
      return ffi_util::invalid("seg_pieces of ", kTpGradsOp, " must be int32[num_nodes + 1]");
    dx_lists->seg_pieces = static_cast<const int32_t*>(seg_pieces.untyped_data());
  }
  if (scratch.element_count() != 0) {
    if (scratch.element_type() != x.element_type() || scratch.element_count() % dim_x != 0)
      return ffi_util::invalid("scratch of ", kTpGradsOp, " must be rows of dx's width and dtype");
    dx_lists->seg_scratch = scratch.untyped_data();
    dx_lists->seg_scratch_rows = static_cast<int64_t>(scratch.element_count()) / dim_x;
  }
  return error;
}

// The second-order pass of the force-training step (target jbm_tp_grads2; tensor_product.py, tp_grads2_p):
// operands x, y, w, z of a slot-z graph call of a compiled shape (y: data or edge vectors; per-edge
// weights; z: the output's cotangent, [num_nodes, dim_z]) and the cotangents c_dy [E, dim_y] (SH values
// when y is edge vectors) and c_dw [E, num_w] of its fused y and weight gradients; results c_x [num_nodes,
// dim_x], c_w [E, num_w], c_z [num_nodes, dim_z], each empty when not asked for. Validated as the slot-z
// call on (x, y, w) (check_tp, which fills *call), then the rest here.
inline constexpr const char* kTpGrads2Op = "jbm_tp_grads2";

inline xla::ffi::Error check_tp_grads2(const xla::ffi::AnyBuffer& x, const xla::ffi::AnyBuffer& y,
                                       const xla::ffi::AnyBuffer& w, const xla::ffi::AnyBuffer& z,
                                       const xla::ffi::AnyBuffer& c_dy, const xla::ffi::AnyBuffer& c_dw,
                                       const xla::ffi::AnyBuffer& senders, const xla::ffi::AnyBuffer& receivers,
                                       const xla::ffi::AnyBuffer& seg_offsets, const xla::ffi::AnyBuffer& seg_edges,
                                       const xla::ffi::AnyBuffer& seg_pieces, const xla::ffi::AnyBuffer& paths,
                                       const xla::ffi::AnyBuffer& cg_ijk, const xla::ffi::AnyBuffer& cg_c,
                                       const xla::ffi::AnyBuffer& path_weight, const xla::ffi::AnyBuffer& c_x,
                                       const xla::ffi::AnyBuffer& c_w, const xla::ffi::AnyBuffer& c_z,
                                       int32_t shared_w, int32_t with_unweighted, int32_t dim_x, int32_t dim_y,
                                       int32_t dim_z, int32_t num_w, int64_t num_items, int32_t kernel,
                                       int32_t zero_fill, int64_t num_nodes, int32_t sh_lmax, int32_t sh_normalize,
                                       int32_t sh_normalization, int32_t yc_width, TpBuffers* bufs,
                                       core::TpCall* call) {
  using ffi_util::invalid;
  if (num_nodes < 0 || shared_w || (kernel >> 4) == 0)
    return invalid(kTpGrads2Op, " serves graph calls of a compiled shape with per-edge weights");
  if (seg_offsets.element_count() != 0 || seg_edges.element_count() != 0 || seg_pieces.element_count() != 0)
    return invalid(kTpGrads2Op, " takes no edge lists (atomic mode)");
  const xla::ffi::AnyBuffer* out_z = c_z.element_count() != 0 ? &c_z : nullptr;
  xla::ffi::Error error = check_tp(x, y, w, senders, receivers, seg_offsets, seg_edges, seg_pieces, nullptr, paths,
                                   cg_ijk, cg_c, path_weight, out_z, static_cast<int32_t>(core::TpSlot::kZ), shared_w,
                                   with_unweighted, dim_x, dim_y, dim_z, num_w, num_items, kernel, zero_fill, num_nodes,
                                   sh_lmax, sh_normalize, sh_normalization, yc_width, bufs, call);
  if (error.failure()) return error;
  const xla::ffi::DataType dt = x.element_type();
  const int64_t edges = call->rows;
  struct Sized {
    const xla::ffi::AnyBuffer& buf;
    const char* name;
    int64_t count;
    bool optional;
  };
  const Sized sized[] = {{z, "z", num_nodes * dim_z, false},       {c_dy, "c_dy", edges * dim_y, false},
                         {c_dw, "c_dw", edges * num_w, false},     {c_x, "c_x (output)", num_nodes * dim_x, true},
                         {c_w, "c_w (output)", edges * num_w, true}, {c_z, "c_z (output)", num_nodes * dim_z, true}};
  for (const Sized& b : sized) {
    const int64_t n = static_cast<int64_t>(b.buf.element_count());
    if (b.buf.element_type() != dt || (n != b.count && !(b.optional && n == 0)))
      return invalid(b.name, " of ", kTpGrads2Op, " must have x's dtype and ", b.count, " elements",
                     b.optional ? " (or none)" : "", ", got ", n);
  }
  return error;
}

}  // namespace jbm

#define JBM_TP_ATTRS                                                                               \
  .Attr<int32_t>("shared_w").Attr<int32_t>("with_unweighted")                                      \
      .Attr<int32_t>("dim_x").Attr<int32_t>("dim_y").Attr<int32_t>("dim_z").Attr<int32_t>("num_w")    \
      .Attr<int64_t>("num_items").Attr<int32_t>("kernel").Attr<int32_t>("zero_fill")                  \
      .Attr<int64_t>("num_nodes").Attr<int32_t>("sh_lmax").Attr<int32_t>("sh_normalize")            \
      .Attr<int32_t>("sh_normalization").Attr<int32_t>("yc_width")

// jbm_tp: three operands, senders, receivers, seg_offsets, seg_edges, seg_pieces, four tables; results
// the output and the scratch.
#define JBM_TP_BIND                                                                                \
  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()         \
      .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()      \
      .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()      \
      .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Attr<int32_t>("slot") JBM_TP_ATTRS

// jbm_tp_grads: x, y, w, z, then as jbm_tp (senders, receivers, the three lists, four tables); results dy,
// dw and dx (each empty when not asked for) and the scratch of split sender lists (deterministic dx).
#define JBM_TP_GRADS_BIND                                                                             \
  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()         \
      .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()      \
      .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()      \
      .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()       \
      .Ret<ffi::AnyBuffer>().Attr<int32_t>("deterministic") JBM_TP_ATTRS

// jbm_tp_grads2: x, y, w, z, c_dy, c_dw, senders, receivers, the three (empty) edge lists, four tables;
// results c_x, c_w, c_z (each empty when not asked for).
#define JBM_TP_GRADS2_BIND                                                                            \
  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()         \
      .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()      \
      .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()      \
      .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()       \
      .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() JBM_TP_ATTRS
