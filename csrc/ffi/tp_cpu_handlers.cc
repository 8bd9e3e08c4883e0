// XLA FFI handler for the tensor product on the CPU: validate, dispatch the dtype, run cpu/ loops.
#include "cpu/tp_cpu.h"
#include "ffi/targets.h"
#include "ffi/tp_problem.h"

namespace ffi = xla::ffi;

namespace jbm {
namespace {

template <typename T>
void run(const core::TpCall& c, const TpBuffers& bufs, const ffi::AnyBuffer& paths, const ffi::AnyBuffer& cg_ijk,
         const ffi::AnyBuffer& cg_c, const ffi::AnyBuffer& pw, ffi::AnyBuffer& out) {
  const T* ops[4];
  for (int s = 0; s < 4; ++s) ops[s] = bufs.ops[s] ? static_cast<const T*>(bufs.ops[s]->untyped_data()) : nullptr;
  cpu::tp<T>(c, static_cast<const core::TpPath*>(paths.untyped_data()),
             static_cast<const int32_t*>(cg_ijk.untyped_data()), static_cast<const T*>(cg_c.untyped_data()),
             static_cast<const T*>(pw.untyped_data()), ops,
             static_cast<T*>(out.untyped_data()));
}

ffi::Error tp_cpu(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer c, ffi::AnyBuffer senders,
                  ffi::AnyBuffer receivers, ffi::AnyBuffer seg_offsets, ffi::AnyBuffer seg_edges, ffi::AnyBuffer seg_pieces, ffi::AnyBuffer paths, ffi::AnyBuffer cg_ijk,
                  ffi::AnyBuffer cg_c, ffi::AnyBuffer pw, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> scratch, int32_t slot, int32_t shared_w, int32_t with_unweighted,
                  int32_t dim_x, int32_t dim_y, int32_t dim_z, int32_t num_w, int64_t num_items, int32_t kernel, int32_t zero_fill, int64_t num_nodes,
                   int32_t sh_lmax, int32_t sh_normalize, int32_t sh_normalization, int32_t yc_width) {
  TpBuffers bufs;
  core::TpCall call;
  ffi::Error error = check_tp(a, b, c, senders, receivers, seg_offsets, seg_edges, seg_pieces, &*scratch, paths, cg_ijk, cg_c, pw, &*out, slot, shared_w, with_unweighted, dim_x, dim_y, dim_z, num_w, num_items, kernel, zero_fill, num_nodes,
                       sh_lmax, sh_normalize, sh_normalization, yc_width, &bufs, &call);
  if (error.failure()) return error;
  ffi::Error table = check_tp_paths(call, static_cast<const core::TpPath*>(paths.untyped_data()),
                                    static_cast<const int32_t*>(cg_ijk.untyped_data()),
                                    static_cast<int64_t>(cg_c.element_count()));
  if (table.failure()) return table;
  ffi::Error segments = check_tp_segments(call);
  if (segments.failure()) return segments;
  if (a.element_type() == ffi::DataType::F32) {
    run<float>(call, bufs, paths, cg_ijk, cg_c, pw, *out);
  } else {
    run<double>(call, bufs, paths, cg_ijk, cg_c, pw, *out);
  }
  return ffi::Error::Success();
}

// The gradients of slot z's operands (jbm_tp_grads): one pass over the channels for a compiled shape (the
// GPU's formulas), else the y and weight gradients as the calls they replace, one after the other.
ffi::Error tp_grads_cpu(ffi::AnyBuffer x, ffi::AnyBuffer y, ffi::AnyBuffer w, ffi::AnyBuffer z, ffi::AnyBuffer senders,
                        ffi::AnyBuffer receivers, ffi::AnyBuffer seg_offsets, ffi::AnyBuffer seg_edges,
                        ffi::AnyBuffer seg_pieces, ffi::AnyBuffer paths, ffi::AnyBuffer cg_ijk, ffi::AnyBuffer cg_c,
                        ffi::AnyBuffer pw, ffi::Result<ffi::AnyBuffer> dy, ffi::Result<ffi::AnyBuffer> dw,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> scratch, int32_t deterministic,
                        int32_t shared_w, int32_t with_unweighted, int32_t dim_x, int32_t dim_y, int32_t dim_z,
                        int32_t num_w, int64_t num_items, int32_t kernel, int32_t zero_fill, int64_t num_nodes,
                        int32_t sh_lmax, int32_t sh_normalize, int32_t sh_normalization, int32_t yc_width) {
  TpBuffers bufs_y, bufs_w;
  core::TpCall call_y, call_w;
  core::DxLists dx_lists;  // (the CPU sums dx in edge order, one thread: deterministic in both modes)
  ffi::Error error = check_tp_grads(x, y, w, z, senders, receivers, seg_offsets, seg_edges, seg_pieces, paths, cg_ijk,
                                    cg_c, pw, *dy, *dw, *dx, *scratch, deterministic, shared_w, with_unweighted, dim_x,
                                    dim_y, dim_z, num_w, num_items, kernel, zero_fill, num_nodes, sh_lmax,
                                    sh_normalize, sh_normalization, yc_width, &bufs_y, &call_y, &bufs_w, &call_w,
                                    &dx_lists);
  if (error.failure()) return error;
  // One table check serves both calls (its slot-dependent part concerns slots x and z only).
  ffi::Error table = check_tp_paths(call_y, static_cast<const core::TpPath*>(paths.untyped_data()),
                                    static_cast<const int32_t*>(cg_ijk.untyped_data()),
                                    static_cast<int64_t>(cg_c.element_count()));
  if (table.failure()) return table;
  const core::TpCall fused_call = core::with_sh_of(call_y, call_w);
  auto fused = [&](auto zero) {
    using T = decltype(zero);
    auto data = [](const ffi::AnyBuffer& b) { return static_cast<const T*>(b.untyped_data()); };
    auto result = [](ffi::AnyBuffer& b) { return b.element_count() ? static_cast<T*>(b.untyped_data()) : nullptr; };
    return cpu::tp_grads_uvu_shape<T>(fused_call, static_cast<const core::TpPath*>(paths.untyped_data()), data(pw),
                                      data(x), data(y), data(w), data(z), result(*dx), result(*dy), result(*dw));
  };
  const bool f32 = x.element_type() == ffi::DataType::F32;
  if (f32 ? fused(float{}) : fused(double{})) return ffi::Error::Success();
  if (dx->element_count() != 0)
    return ffi_util::invalid("dx of ", kTpGradsOp, " needs the call to fit its compiled shape");
  auto separate = [&](auto zero) {
    using T = decltype(zero);
    if (dy->element_count() != 0) run<T>(call_y, bufs_y, paths, cg_ijk, cg_c, pw, *dy);
    if (dw->element_count() != 0) run<T>(call_w, bufs_w, paths, cg_ijk, cg_c, pw, *dw);
  };
  f32 ? separate(float{}) : separate(double{});
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jbm

XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmTpCpu, jbm::tp_cpu, ffi::Ffi::Bind() JBM_TP_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JbmTpGradsCpu, jbm::tp_grads_cpu, ffi::Ffi::Bind() JBM_TP_GRADS_BIND);
