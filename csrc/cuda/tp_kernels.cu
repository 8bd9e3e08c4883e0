// Tensor product on the GPU: two kernels, both one block per row (grid-stride) writing the row's output
// once, coalesced, from shared memory; the gradient of shared weights (a sum over rows) keeps one
// accumulator per block and adds it to the output at the end.
//
// * tp_uvu_shaped_kernel / tp_uvu_shaped_grads_kernel (plain products of a compiled shape,
//   core/tp_uvu_shape.h: MACE-large and MACE-medium): the forward and the whole backward (dx, dy, dw in
//   one pass) as straight-line code per channel, operands in registers, no tables; on graphs (the
//   convolution) tp_uvu_shaped_edge_kernel / tp_uvu_shaped_edge_grads_kernel, the same per-channel code
//   over chunks of edges (the backward's dx scattered to senders by atomic adds in atomic mode).
// * tp_uvu_kernel (core::TpKernel::kUvu, the MACE/NequIP/Nequix channelwise problems): the rows of the
//   three inputs are staged in shared memory with coalesced loads, then threads run over the channels
//   of each path with compile-time CG blocks (csrc/core/tp_uvu.h), each thread owning its channel's
//   outputs (no atomics). The y gradient, a sum over channels, is accumulated per thread and reduced
//   by warps at the end of the row.
// * tp_kernel (everything else): threads over the items of all paths (csrc/core/tp.h), contributions
//   accumulated with shared-memory atomics (global ones for outputs too wide for shared memory); the
//   outer product of the uvw route (core::TpMode::kOuter) writes its outputs directly.
// * Deterministic scatter of the convolution (TpCall::segmented: output slot x or z, edges listed per
//   target node): tp_uvu_segment_kernel / tp_segment_kernel, one block per node, which stage a chunk of
//   the node's edges in shared memory, sum their contributions in a fixed order in registers (the
//   generic one output-stationary, core::tp_path_element) and store the node's row once: no atomics,
//   no zeroing pass.
// With sh_lmax >= 0 the y rows are spherical harmonics of edge vectors, evaluated into shared memory
// (core::tp_sh_row) and never written to device memory.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "core/tp_uvu.h"
#include "core/tp_uvu_shape.h"
#include "cuda/tp_kernels.h"

namespace jbm::cuda {
namespace {

using core::TpCall;
using core::TpPath;
using core::TpSlot;

constexpr int kThreads = 128;
constexpr size_t kSmemBudget = 40 * 1024;

__host__ __device__ constexpr size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// The block's copy of the path table and (if pw_g) the path weights, in shared memory; the caller syncs.
template <typename T>
__device__ void stage_tables(const TpCall& c, const TpPath* paths_g, const T* pw_g, TpPath* paths, T* pw) {
  for (int k = threadIdx.x; k < c.num_paths * core::kTpPathFields; k += blockDim.x)
    reinterpret_cast<int32_t*>(paths)[k] = reinterpret_cast<const int32_t*>(paths_g)[k];
  if (pw_g)
    for (int k = threadIdx.x; k < c.num_paths; k += blockDim.x) pw[k] = pw_g[k];
}

// Spherical harmonics of edge vector r (y computed in the kernel): thread 0 evaluates them into shared
// memory; the first sync lets the block finish reading the previous row's values. Block-uniform call.
template <typename T>
__device__ const T* stage_sh_row(const TpCall& c, const T* vectors, int64_t r, bool valid, T* buf) {
  __syncthreads();
  if (threadIdx.x == 0 && valid) core::tp_sh_row(c, vectors + r * 3, buf);
  __syncthreads();
  return buf;
}

constexpr int kShRowElems = core::sh_dim(core::kTpShMaxL);

template <TpSlot SLOT, typename T, bool SMEM>
__global__ void __launch_bounds__(kThreads) tp_kernel(TpCall c, const TpPath* __restrict__ paths_g,
                                                      const int32_t* __restrict__ cg_ijk,
                                                      const T* __restrict__ cg_c, const T* __restrict__ pw,
                                                      const T* x, const T* y,
                                                      const T* w, const T* z, T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  T* acc = reinterpret_cast<T*>(smem_raw + align16(c.num_paths * sizeof(TpPath)));
  T* sh_row = acc + (SMEM ? align16(c.out_width() * sizeof(T)) / sizeof(T) : 0);
  stage_tables(c, paths_g, static_cast<const T*>(nullptr), paths, static_cast<T*>(nullptr));

  const int64_t width = c.out_width();
  const bool reduce = c.reduces_rows();
  const int64_t wrow = c.shared_w ? 0 : c.num_w;
  if (SMEM)
    for (int64_t k = threadIdx.x; k < width; k += blockDim.x) acc[k] = T(0);
  __syncthreads();

  for (int64_t r = blockIdx.x; r < c.rows; r += gridDim.x) {
    int64_t rx, rz;
    const bool valid = c.edge_rows(r, &rx, &rz);  // uniform over the block
    const int64_t orow_index = c.out_row(r, rx, rz);
    T* dst = SMEM ? acc : (reduce ? out : out + orow_index * width);
    const T* xr = x ? x + rx * c.dim_x : nullptr;
    const T* yr = c.sh_lmax >= 0 ? stage_sh_row(c, y, r, valid, sh_row) : y ? y + r * c.dim_y : nullptr;
    const T* wr = w ? w + r * wrow : nullptr;
    const T* zr = z ? z + rz * c.dim_z : nullptr;
    for (int64_t it = valid ? threadIdx.x : c.num_items; it < c.num_items; it += blockDim.x) {
      const int32_t p = core::tp_find_path(paths, c.num_paths, it);
      // An outer path's item is the only writer of its output elements (T[k, uv], blocks disjoint by
      // construction): a plain add. Everything else may share targets: atomics.
      const bool exclusive = SLOT == TpSlot::kZ && core::tp_outer(paths[p]);
      auto add = [dst, exclusive](int64_t idx, T v) {
        if (exclusive)
          dst[idx] += v;
        else
          atomicAdd(dst + idx, v);
      };
      core::tp_item<SLOT>(paths[p], it - paths[p].item_begin, pw[p], c.with_unweighted, xr, yr, wr, zr, cg_ijk,
                          cg_c, add);
    }
    if (SMEM && !reduce) {
      __syncthreads();
      T* orow = out + orow_index * width;
      for (int64_t k = threadIdx.x; k < width; k += blockDim.x) {
        if (!c.scatters())
          orow[k] = acc[k];
        else if (valid)
          atomicAdd(orow + k, acc[k]);  // edges sharing a sender/receiver meet here
        acc[k] = T(0);
      }
      __syncthreads();
    }
  }
  if (SMEM && reduce) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < width; k += blockDim.x) atomicAdd(out + k, acc[k]);
  }
}


// ---- channelwise kernel ----------------------------------------------------------------------------
//
// Thread (row, channel u). e3nn's layout puts a channel's 2l+1 components side by side, so a warp's
// loads of x[u, i] are strided; L1 serves the other components of the same lines, so each byte still
// crosses HBM once. Outputs of slots z and x are accumulated in registers over every path that
// writes the same irrep block and stored once; the weight gradient is one store per path; the y
// gradient, a sum over channels, goes through per-thread partials in shared memory and a warp
// reduction at the end of the row.

// Shared memory of tp_uvu_kernel: path table, path weights, then (slot y) the threads' partial y rows.
__host__ __device__ inline size_t uvu_table_bytes(const TpCall& c, size_t elem) {
  return align16(c.num_paths * sizeof(TpPath)) + align16(c.num_paths * elem);
}
__host__ __device__ inline int64_t uvu_part_stride(const TpCall& c) { return c.dim_y | 1; }  // odd: no bank conflicts
// with_sh: including the row of spherical harmonics at the end (sh_lmax >= 0).
__host__ __device__ inline size_t uvu_smem_bytes(const TpCall& c, int threads, size_t elem, bool with_sh = true) {
  const int64_t extra = c.slot == TpSlot::kY ? threads * uvu_part_stride(c) : c.reduces_rows() ? c.num_w : 0;
  return uvu_table_bytes(c, elem) + align16(extra * elem) + (with_sh && c.sh_lmax >= 0 ? kShRowElems * elem : 0);
}

// The irreps block a path writes in slot SLOT's operand (z: its output block, x: its first input).
template <TpSlot SLOT>
__device__ int32_t uvu_target(const TpPath& p) { return SLOT == TpSlot::kZ ? p.off_out : p.off1; }

// Slots z and x: calls f(first, end, u, IntC<LT>) for every run [first, end) of consecutive paths
// writing one irrep block (of degree LT; Python groups them) and each of this thread's channels u.
template <TpSlot SLOT, typename F>
__device__ void for_each_block_run(const TpCall& c, const TpPath* paths, F&& f) {
  for (int32_t first = 0, end; first < c.num_paths; first = end) {
    const int32_t target = uvu_target<SLOT>(paths[first]);
    for (end = first + 1; end < c.num_paths && uvu_target<SLOT>(paths[end]) == target;) ++end;
    const TpPath& p = paths[first];
    const int lt = ((SLOT == TpSlot::kZ ? p.dim_out : p.dim1) - 1) / 2;
    for (int32_t u = threadIdx.x; u < p.mul1; u += blockDim.x)
      core::degree_dispatch(lt, [&](auto l) { f(first, end, u, l); });
  }
}

// Slots z and x: adds to acc (out[u, :] of one irrep block) the contributions of the run of paths
// [first, end) writing it (Python groups the paths by that block), for one row's operands x, y, w, z.
// One path of such a run, its scale (pw · w[u], or pw for a path without weights) already known.
template <TpSlot SLOT, int LT, typename T>
__device__ void uvu_accumulate_path(const TpPath& p, int32_t u, const T* x, const T* y, const T* z, T scale, T* acc) {
  core::uvu_dispatch(p, [&](auto l1, auto l2, auto lo) {
    constexpr int L1 = decltype(l1)::value, L2 = decltype(l2)::value, LO = decltype(lo)::value;
    if constexpr ((SLOT == TpSlot::kZ ? LO : L1) == LT) {
      const T* xu = SLOT == TpSlot::kX ? nullptr : x + p.off1 + u * (2 * L1 + 1);
      const T* zu = SLOT == TpSlot::kZ ? nullptr : z + p.off_out + u * (2 * LO + 1);
      core::uvu_channel<L1, L2, LO, SLOT>(xu, y + p.off2, zu, scale, acc);
    }
  });
}

template <TpSlot SLOT, int LT, typename T>
__device__ void uvu_accumulate(const TpCall& c, const TpPath* paths, const T* pw, int32_t first, int32_t end,
                               int32_t u, const T* x, const T* y, const T* w, const T* z, T* acc) {
  for (int32_t pi = first; pi < end; ++pi) {
    const TpPath& p = paths[pi];
    if (!core::uvu_path_active<SLOT>(p, c.with_unweighted)) continue;
    const T scale = p.off_w >= 0 ? pw[pi] * w[p.off_w + u] : pw[pi];
    uvu_accumulate_path<SLOT, LT>(p, u, x, y, z, scale, acc);
  }
}

enum class Store { kSet, kAdd, kAtomicAdd };

template <typename T>
__device__ __forceinline__ void store_one(T value, T* dst, Store how) {
  if (how == Store::kAtomicAdd)
    atomicAdd(dst, value);
  else if (how == Store::kAdd)
    *dst += value;
  else
    *dst = value;
}

template <int D, typename T>
__device__ void store_block(const T* acc, T* dst, Store how) {
  for (int k = 0; k < D; ++k) store_one(acc[k], dst + k, how);
}

template <TpSlot SLOT, int LT, typename T>
__device__ void uvu_block(const TpCall& c, const TpPath* paths, const T* pw, int32_t first, int32_t end, int32_t u,
                          const T* x, const T* y, const T* w, const T* z, T* out, bool scatter) {
  constexpr int DT = 2 * LT + 1;
  T acc[DT];
  for (int k = 0; k < DT; ++k) acc[k] = T(0);
  uvu_accumulate<SLOT, LT>(c, paths, pw, first, end, u, x, y, w, z, acc);
  store_block<DT>(acc, out + uvu_target<SLOT>(paths[first]) + u * DT, scatter ? Store::kAtomicAdd : Store::kSet);
}

// GRAPH: rows are edges (gathers and scatters); SH: y rows are spherical harmonics computed here. Separate
// instantiations keep the plain product lean (the SH code alone cost it 20%: registers, occupancy).
template <TpSlot SLOT, typename T, bool GRAPH, bool SH>
__global__ void __launch_bounds__(kThreads) tp_uvu_kernel(TpCall c, const TpPath* __restrict__ paths_g,
                                                          const T* __restrict__ pw_g, const T* __restrict__ x,
                                                          const T* __restrict__ y, const T* __restrict__ w,
                                                          const T* __restrict__ z, T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  T* pw = reinterpret_cast<T*>(smem_raw + align16(c.num_paths * sizeof(TpPath)));
  T* scratch = reinterpret_cast<T*>(smem_raw + uvu_table_bytes(c, sizeof(T)));
  T* sh_row = reinterpret_cast<T*>(smem_raw + uvu_smem_bytes(c, blockDim.x, sizeof(T), false));
  stage_tables(c, paths_g, pw_g, paths, pw);
  const bool reduce = c.reduces_rows();
  if (reduce)
    for (int64_t k = threadIdx.x; k < c.num_w; k += blockDim.x) scratch[k] = T(0);
  __syncthreads();

  const int64_t stride = uvu_part_stride(c);
  const bool scatter = GRAPH && c.scatters();
  for (int64_t r = blockIdx.x; r < c.rows; r += gridDim.x) {
    int64_t rx = r, rz = r;
    const bool valid = !GRAPH || c.edge_rows(r, &rx, &rz);  // uniform over the block
    const T* xr = x ? x + rx * c.dim_x : nullptr;
    const T* yr = SH ? stage_sh_row(c, y, r, valid, sh_row) : y ? y + r * c.dim_y : nullptr;
    const T* wr = w ? (c.shared_w ? w : w + r * c.num_w) : nullptr;
    const T* zr = z ? z + rz * c.dim_z : nullptr;
    if (!valid && !(SLOT == TpSlot::kY || (SLOT == TpSlot::kW && !reduce))) continue;  // dropped edge
    if constexpr (SLOT == TpSlot::kZ || SLOT == TpSlot::kX) {
      T* orow = out + (GRAPH ? c.out_row(r, rx, rz) : r) * c.out_width();
      for_each_block_run<SLOT>(c, paths, [&](int32_t first, int32_t end, int32_t u, auto lt) {
        uvu_block<SLOT, decltype(lt)::value>(c, paths, pw, first, end, u, xr, yr, wr, zr, orow, scatter);
      });
    } else {
      // Slot y: partial rows per thread; slot w: the row of the output (or the block's shared sum).
      T* dst = SLOT == TpSlot::kY ? scratch + threadIdx.x * stride : reduce ? scratch : out + r * c.num_w;
      if (SLOT == TpSlot::kY)
        for (int j = 0; j < c.dim_y; ++j) dst[j] = T(0);
      if (SLOT == TpSlot::kW && !valid)  // a dropped edge's weight gradient is zero
        for (int64_t k = threadIdx.x; k < c.num_w; k += blockDim.x) dst[k] = T(0);
      for (int32_t pi = 0; valid && pi < c.num_paths; ++pi) {
        const TpPath& p = paths[pi];
        if (!core::uvu_path_active<SLOT>(p, c.with_unweighted)) continue;
        core::uvu_dispatch(p, [&](auto l1, auto l2, auto lo) {
          constexpr int L1 = decltype(l1)::value, L2 = decltype(l2)::value, LO = decltype(lo)::value;
          for (int32_t u = threadIdx.x; u < p.mul1; u += blockDim.x) {
            if (SLOT == TpSlot::kW && !reduce) {
              const T* xu = xr + p.off1 + u * (2 * L1 + 1);
              const T* zu = zr + p.off_out + u * (2 * LO + 1);
              dst[p.off_w + u] = core::uvu_channel<L1, L2, LO, SLOT>(xu, yr + p.off2, zu, pw[pi], dst);
            } else {
              core::uvu_apply<SLOT, L1, L2, LO>(p, u, pw[pi], xr, yr, wr, zr, dst);
            }
          }
        });
      }
      if constexpr (SLOT == TpSlot::kY) {
        __syncthreads();
        // dy[j] = sum of the threads' partials: warps take components, lanes take threads.
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
        for (int j = warp; j < c.dim_y; j += warps) {
          T v = T(0);
          for (int t = lane; t < blockDim.x; t += 32) v += scratch[t * stride + j];
          for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
          if (lane == 0) out[r * c.dim_y + j] = v;
        }
        __syncthreads();
      }
    }
  }
  if (reduce) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < c.num_w; k += blockDim.x) atomicAdd(out + k, scratch[k]);
  }
}

// ---- full channelwise problems fixed at compile time (core/tp_uvu_shape.h) -------------------------
//
// Slot z of a plain product: a block per row (grid-stride), a thread per channel. The channel's x
// components, the row's y and the path scales are loaded into registers up front (independent loads),
// then every path runs as straight-line code from the compile-time list, accumulating all output
// blocks of the channel in registers, stored once. No path table in the loop, no runtime dispatch:
// the table-driven kernel above spent ~8k warp instructions per MACE-large row, 22% of them FP32
// (ncu, session 12).
//
// fp32 is compiled for 8 blocks per SM (at most 64 registers, no spills). H100, MACE-large B = 50k,
// forward (session 13): 0.492 ms uncapped (96 registers, 5 blocks per SM, ncu: DRAM 67%, 3.4k warp
// instructions per row); capped in one build at 1 / 6 / 8 blocks (124 / 80 / 64 registers) 0.588 /
// 0.473 / 0.438 ms: the loads are issued up front, so more resident warps keep more bytes in flight.
// Session 17: the path scales loaded one per thread instead of by thread 0 alone (each block's start
// waited on 17 serial table reads): MACE-large 0.427 -> 0.371 ms, MACE-medium 0.202 -> 0.191 (same build;
// fwd+bwd 1.29 -> 1.10 and 0.59 -> 0.52). A grid of 8 or 24 blocks per SM striding over the rows: slower.
template <typename T>
constexpr int kShapedMinBlocks = sizeof(T) == 4 ? 8 : 1;

// A shaped kernel's path scales into shared memory (instruction order), one path per thread: one round
// trip to the table at block start. Thread 0 walking the table held every block's first loads behind 17
// dependent table reads (the loop's checks keep the compiler from issuing them together). The table was
// checked by Python (tensor_product.py, _uvu_shape) and the launcher (shape_fits); callers sync before use.
template <int N, typename T>
__device__ void load_shape_path_weights(const TpPath* __restrict__ paths_g, const T* __restrict__ pw_g,
                                        int32_t num_paths, int32_t mul, T* pw) {
  for (int32_t pi = threadIdx.x; pi < num_paths; pi += blockDim.x)
    core::shape_path_weight<N>(paths_g[pi], pw_g[pi], mul, pw);
}

template <uint32_t X, uint32_t Y, uint32_t O, typename T>
__global__ void __launch_bounds__(kThreads, kShapedMinBlocks<T>)
    tp_uvu_shaped_kernel(TpCall c, const TpPath* __restrict__ paths_g, const T* __restrict__ pw_g,
                         const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w, T* __restrict__ out) {
  using S = core::UvuShape<X, Y, O>;
  __shared__ T pw[S::kNumPaths];
  const int32_t mul = static_cast<int32_t>(c.dim_x / S::kDimX);
  load_shape_path_weights<S::kNumPaths>(paths_g, pw_g, c.num_paths, mul, pw);
  __syncthreads();
  const int64_t w_stride = c.shared_w ? 0 : c.num_w;
  for (int64_t r = blockIdx.x; r < c.rows; r += gridDim.x) {
    T yv[S::kDimY];
    for (int j = 0; j < S::kDimY; ++j) yv[j] = y[r * c.dim_y + j];
    for (int32_t u = threadIdx.x; u < mul; u += blockDim.x) {
      T xu[S::kDimX], scale[S::kNumPaths], zu[S::kDimO];
      core::shape_gather<X>(x + r * c.dim_x, mul, u, xu);
      for (int n = 0; n < S::kNumPaths; ++n) scale[n] = pw[n] * w[r * w_stride + int64_t(n) * mul + u];
      core::uvu_shape_channel<X, Y, O>(xu, yv, scale, zu);
      core::shape_scatter<O, false>(zu, mul, u, out + r * c.dim_z);
    }
  }
}

// The backward of slot z of a plain product with per-row weights, one pass (core::uvu_shape_channel_grads):
// dy, dw and (DX) dx of a row from x, y, w and the output cotangent dz. A block per row, a thread per
// channel as in the forward: the channel's x and dz and the row's y in registers, each path's weight read
// and its weight gradient stored when the path comes (coalesced over the channels), dx stored once. dy
// sums over the channels: each thread keeps its partial dy (16 values for l ≤ 3) and the block reduces
// them at the end of the row (warp_sum_pairs, then one shared-memory row per warp).
//
// Bytes per MACE-large row (U = 128, 17 paths, fp32): reads x 4.6 kB, dz 8.2 kB, w 8.7 kB; writes
// dx 4.6 kB, dw 8.7 kB: 35 kB, 0.52 ms for B = 50k at 3.35 TB/s — against 1.81 ms for the separate x,
// y and w kernels (session 13). ~940 instructions per channel (215 CG entries, 3 each, plus the per-path
// sums): 0.2 ms of issue; the kernel is bound by the bytes it keeps in flight. fp32 is compiled for 4
// blocks per SM (128 registers, no spills). H100, session 14, B = 50k: MACE-large 0.86–0.94 ms, MACE-medium
// 0.36 ms; 6 or 8 blocks per SM spill and ran 2–3x slower, so did staging the rows in shared memory
// (cp.async) and keeping dy in shared memory instead of registers (benchmarks/NOTES.md).
constexpr int kGradsMaxDimY = 16;  // y of degrees ≤ kCgMaxL = 3

// The sums over a warp's lanes of 16 values per lane, by halving: after the step of offset 2^s a lane keeps
// the half of its values picked by bit s of its lane id and adds its partner's copy of that half. 16
// shuffles instead of 80; lane l ends with the sum of value l / 2 (both lanes of a pair hold it).
template <typename T>
__device__ T warp_sum_pairs(T (&v)[kGradsMaxDimY]) {
  static_assert(kGradsMaxDimY == 16, "four halving steps, then one pair step");
  const int lane = threadIdx.x % 32;
  auto step = [&](auto half_c, int offset) {
    constexpr int H = decltype(half_c)::value;
    const bool upper = lane & offset;
    for (int i = 0; i < H; ++i) {
      const T send = upper ? v[i] : v[i + H];
      const T keep = upper ? v[i + H] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
    }
  };
  step(core::IntC<8>{}, 16);
  step(core::IntC<4>{}, 8);
  step(core::IntC<2>{}, 4);
  step(core::IntC<1>{}, 2);
  return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
}

template <typename T>
constexpr int kShapedGradsMinBlocks = sizeof(T) == 4 ? 4 : 1;

template <uint32_t X, uint32_t Y, uint32_t O, bool DX, typename T>
__global__ void __launch_bounds__(kThreads, kShapedGradsMinBlocks<T>)
    tp_uvu_shaped_grads_kernel(TpCall c, const TpPath* __restrict__ paths_g, const T* __restrict__ pw_g,
                               const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w,
                               const T* __restrict__ dz, T* __restrict__ dx, T* __restrict__ dy, T* __restrict__ dw) {
  using S = core::UvuShape<X, Y, O>;
  static_assert(S::kDimY <= kGradsMaxDimY, "y of degrees above 3");
  constexpr int kWarps = kThreads / 32;
  __shared__ T pw[S::kNumPaths];
  __shared__ T dy_warps[2][kWarps][S::kDimY];  // two rows' worth: one sync per row (see below)
  const int32_t mul = static_cast<int32_t>(c.dim_x / S::kDimX);
  load_shape_path_weights<S::kNumPaths>(paths_g, pw_g, c.num_paths, mul, pw);
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int parity = 0;
  for (int64_t r = blockIdx.x; r < c.rows; r += gridDim.x, parity ^= 1) {
    T yv[S::kDimY], dyv[kGradsMaxDimY];
    for (int j = 0; j < S::kDimY; ++j) yv[j] = y[r * c.dim_y + j];
    for (int j = 0; j < kGradsMaxDimY; ++j) dyv[j] = T(0);
    const T* wr = w + r * c.num_w;
    T* dwr = dw + r * c.num_w;
    for (int32_t u = threadIdx.x; u < mul; u += blockDim.x) {
      T xu[S::kDimX], dzu[S::kDimO], dxu[S::kDimX];
      core::shape_gather<X>(x + r * c.dim_x, mul, u, xu);
      core::shape_gather<O>(dz + r * c.dim_z, mul, u, dzu);
      core::uvu_shape_channel_grads<X, Y, O, core::kGradY | core::kGradW | (DX ? core::kGradX : 0)>(
          xu, yv, dzu, pw, [&](int n) { return wr[int64_t(n) * mul + u]; }, dxu, dyv,
          [&](int n, T v) { dwr[int64_t(n) * mul + u] = v; });
      if constexpr (DX) core::shape_scatter<X, false>(dxu, mul, u, dx + r * c.dim_x);
    }
    // Block sum of dy: warps first, then one row per warp in shared memory. The buffer alternates with
    // the rows, so the next row's writes cannot meet this row's reads: a thread writes buffer b again
    // only after passing the next row's sync, which the readers of b reach after reading.
    const T sum = warp_sum_pairs(dyv);
    if (lane % 2 == 0 && lane / 2 < S::kDimY) dy_warps[parity][warp][lane / 2] = sum;
    __syncthreads();
    if (threadIdx.x < S::kDimY) {
      T total = T(0);
      for (int k = 0; k < kWarps; ++k) total += dy_warps[parity][k][threadIdx.x];
      dy[r * c.dim_y + threadIdx.x] = total;
    }
  }
}

// ---- deterministic scatter (segmented) -------------------------------------------------------------
//
// Block per target node; its edges (core::TpCall::seg_offsets / seg_edges) are taken kChunk at a time:
// threads stage the edge ids, the rows of the gathered operand and (sh_lmax >= 0) the spherical
// harmonics in shared memory, then every thread sums its output elements over the chunk's edges in
// order. The first chunk stores, later ones add: the node's row has no other writer.

constexpr int kChunk = 32;
// y rows up to this width are staged in shared memory with the chunk (spherical harmonics always are).
constexpr int kMaxStagedY = 32;

struct SegmentChunk {
  int32_t* edge;    // edge id, or -1 for an entry that is skipped (invalid, or not this node's)
  int32_t* source;  // row of the gathered operand: the sender's x row (slot z), the receiver's z row (slot x)
};

__host__ __device__ inline bool stages_y(const TpCall& c) { return c.sh_lmax >= 0 || c.dim_y <= kMaxStagedY; }

// Shared memory after the tables: chunk indices and staged y rows.
template <typename T>
__host__ __device__ inline size_t segment_chunk_bytes(const TpCall& c) {
  return align16(2 * kChunk * sizeof(int32_t)) + align16(stages_y(c) ? kChunk * size_t(c.dim_y) * sizeof(T) : 0);
}
template <typename T>
__host__ __device__ inline size_t segment_smem_bytes(const TpCall& c, size_t table_bytes) {
  return table_bytes + segment_chunk_bytes<T>(c);
}

// Stages edges [k0, k0 + count) of node n's list; returns after the block has synced.
template <typename T>
__device__ void stage_chunk(const TpCall& c, int64_t n, int64_t k0, int count, const T* y, SegmentChunk chunk,
                            T* y_rows) {
  if (threadIdx.x < count) {
    const int64_t k = k0 + threadIdx.x;
    const int64_t e = c.seg_edges ? c.seg_edges[k] : k;
    int64_t rx = 0, rz = 0;
    const bool ok = c.segment_edge(e, n, &rx, &rz);
    chunk.edge[threadIdx.x] = ok ? static_cast<int32_t>(e) : -1;
    chunk.source[threadIdx.x] = static_cast<int32_t>(c.slot == TpSlot::kZ ? rx : rz);
    if (ok && c.sh_lmax >= 0) core::tp_sh_row(c, y + e * 3, y_rows + threadIdx.x * c.dim_y);
  }
  if (c.sh_lmax < 0 && stages_y(c)) {  // data rows: coalesced copy, all threads
    __syncthreads();
    for (int i = threadIdx.x; i < count * c.dim_y; i += blockDim.x) {
      const int32_t e = chunk.edge[i / c.dim_y];
      if (e >= 0) y_rows[i] = y[int64_t(e) * c.dim_y + i % c.dim_y];
    }
  }
  __syncthreads();
}

// Node n's edge range [begin, end), clamped to the edge count (the offsets are device data).
__device__ inline void segment_range(const TpCall& c, int64_t n, int64_t* begin, int64_t* end) {
  *begin = min(max(int64_t(c.seg_offsets[n]), int64_t(0)), c.rows);
  *end = min(max(int64_t(c.seg_offsets[n + 1]), *begin), c.rows);
}

// Units of a deterministic launch: one per node and (an upper bound) one per scratch row of a split list;
// segment_piece skips those past the last piece.
__host__ __device__ inline int64_t node_piece_units(const TpCall& c) {
  return c.nodes + (c.seg_pieces ? c.seg_scratch_rows : 0);
}

// Unit u of a deterministic launch on the channelwise kernel: piece j of node n's edge list
// (TpCall::seg_pieces; without them, node u whole), where n + seg_pieces[n] <= u < n + 1 + seg_pieces[n + 1].
// Sets the piece's edge range and its row: the node's output row (piece 0) or, with *in_scratch, a
// scratch row; returns false past the last piece (or for a scratch row beyond the buffer: the tables
// are device data).
__device__ inline bool segment_piece(const TpCall& c, int64_t u, int64_t* node, int64_t* row, bool* in_scratch,
                                     int64_t* begin, int64_t* end) {
  *in_scratch = false;
  if (!c.seg_pieces) {
    if (u >= c.nodes) return false;
    *node = *row = u;
    segment_range(c, u, begin, end);
    return true;
  }
  if (u >= c.nodes + c.seg_pieces[c.nodes]) return false;
  int64_t lo = 0, hi = c.nodes - 1;  // the last n with n + seg_pieces[n] <= u
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (mid + c.seg_pieces[mid] <= u) lo = mid; else hi = mid - 1;
  }
  const int64_t n = lo, j = u - n - c.seg_pieces[n], pieces = 1 + c.seg_pieces[n + 1] - c.seg_pieces[n];
  if (j < 0 || j >= pieces) return false;
  int64_t b, e;
  segment_range(c, n, &b, &e);
  *node = n;
  *row = j == 0 ? n : c.seg_pieces[n] + j - 1;
  *in_scratch = j > 0;
  *begin = b + j * (e - b) / pieces;
  *end = b + (j + 1) * (e - b) / pieces;
  return j == 0 || *row < c.seg_scratch_rows;
}

// Adds the scratch rows of split nodes to their output rows, in piece order (deterministic).
template <typename T>
__global__ void __launch_bounds__(kThreads) add_segment_pieces(TpCall c, T* __restrict__ out) {
  const T* scratch = static_cast<const T*>(c.seg_scratch);
  const int64_t width = c.out_width();
  for (int64_t n = blockIdx.x; n < c.nodes; n += gridDim.x) {
    const int64_t first = max(int64_t(c.seg_pieces[n]), int64_t(0));
    const int64_t last = min(int64_t(c.seg_pieces[n + 1]), c.seg_scratch_rows);
    for (int64_t k = threadIdx.x; first < last && k < width; k += blockDim.x) {
      T v = out[n * width + k];
      for (int64_t r = first; r < last; ++r) v += scratch[r * width + k];
      out[n * width + k] = v;
    }
  }
}

// add_segment_pieces over the output `out` of `c`'s width (after the kernel that wrote the pieces).
template <typename T>
cudaError_t launch_add_segment_pieces(cudaStream_t stream, const TpCall& c, T* out) {
  add_segment_pieces<T><<<static_cast<unsigned>(std::min<int64_t>(c.nodes, int64_t(1) << 20)), kThreads, 0, stream>>>(
      c, out);
  return cudaGetLastError();
}

// Operands of one staged edge t: the gathered row (x for slot z, z for slot x), y, w.
template <TpSlot SLOT, typename T>
struct EdgeRows {
  const T *x, *y, *w, *z;
  __device__ EdgeRows(const TpCall& c, SegmentChunk chunk, int t, const T* y_rows, const T* x_g, const T* y_g,
                      const T* w_g, const T* z_g) {
    const int64_t e = chunk.edge[t], src = chunk.source[t];
    x = SLOT == TpSlot::kZ ? x_g + src * c.dim_x : nullptr;
    z = SLOT == TpSlot::kX ? z_g + src * c.dim_z : nullptr;
    y = stages_y(c) ? y_rows + t * c.dim_y : y_g + e * c.dim_y;
    w = c.shared_w ? w_g : w_g + e * c.num_w;
  }
};

// ---- the convolution's scatter on the channelwise kernel: edge chunks, y contracted per edge ----------
//
// Slots z and x of a graph call (TpKernel::kUvu), in both modes:
// * deterministic (TpCall::segmented): a block per target node, over its edge list, storing the row
//   (a list longer than Python's SEGMENT_PIECE_EDGES is cut into pieces, one block each: the later
//   pieces write scratch rows that add_segment_pieces adds in order; see TpCall::seg_pieces);
// * atomic: a block per chunk of consecutive edges in the caller's order; consecutive edges with the same
//   target (receiver-sorted edges: a node's whole list) are summed in registers and added with one
//   atomic per element and run, not one per edge.
// A chunk is staged in shared memory: edge ids, gathered rows, targets, runs of equal target, SH rows
// (sh_lmax >= 0), and for every (edge, path) the y-contracted CG block M = pw * C·y
// (core::uvu_contract_y), which all channels then read with broadcast vector loads: per channel, edge
// and path, D1·DO multiply-adds (ncu on the previous kernel, which ran the CG entries per channel: ~645
// warp instructions per edge and 32 channels, instruction-bound).

constexpr int kMaxEdgeChunk = 32;
constexpr size_t kEdgeSmemBudget = 48 * 1024;  // no opt-in: keeps several blocks per SM

// The chunk's valid entries, compacted (an invalid edge, or one not of this node, is left out), and
// split into runs of equal target.
struct EdgeChunk {
  int32_t* edge;        // edge id
  int32_t* source;      // row of the gathered operand (x's for slots z and w, z's for slot x)
  int32_t* source2;     // slot w: the z row
  unsigned* valid;      // bit t: entry t of the chunk (before compaction) is valid
  int32_t* runs;        // runs[r] .. runs[r + 1]: the entries of run r
  int32_t* run_target;  // the row run r writes
  int32_t* num_runs;
  int32_t* m_off;     // offset of path p's contracted block in an edge's row of blocks; m_off[P]: row width
  void* m;            // [size][yc_width] contracted blocks (not for slot y alone)
  void* y_rows;       // [size][dim_y] SH rows (sh_lmax >= 0)
  void* dy_rows;      // slot y: [size][dim_y] the entries' y-gradient rows
};

// Index entries of a chunk of `size` (EdgeChunk's int arrays, carve_edge_indices).
__host__ __device__ constexpr int edge_chunk_ints(int size) { return 5 * size + 3; }

// Whether the chunk stages y-contracted blocks: every call but the y gradient alone.
__host__ __device__ inline bool edge_contracts(const TpCall& c, bool with_w) { return c.slot != TpSlot::kY || with_w; }

// with_w: the fused y and weight gradients (slot y call that also writes the per-row weight gradient).
__host__ __device__ inline size_t edge_chunk_bytes(const TpCall& c, int size, size_t elem, bool with_w = false) {
  return uvu_table_bytes(c, elem) + align16((c.num_paths + 1) * sizeof(int32_t)) +
         align16(edge_chunk_ints(size) * sizeof(int32_t)) +
         (edge_contracts(c, with_w) ? align16(size * size_t(c.yc_width) * elem) : 0) +
         (c.sh_lmax >= 0 ? align16(size * size_t(c.dim_y) * elem) : 0) +
         (c.slot == TpSlot::kY ? align16(size * size_t(c.dim_y) * elem) : 0);
}

// Entries per chunk: as many as the budget holds, at most kMaxEdgeChunk; 0 if not even one fits.
inline int edge_chunk_size(const TpCall& c, size_t elem, bool with_w = false) {
  int size = kMaxEdgeChunk;
  while (size > 0 && edge_chunk_bytes(c, size, elem, with_w) > kEdgeSmemBudget) --size;
  return size;
}

// The chunk's index arrays in `ints` (edge_chunk_ints(size) of them).
__device__ inline void carve_edge_indices(int32_t* ints, int size, EdgeChunk* ch) {
  ch->edge = ints;
  ch->source = ints + size;
  ch->source2 = ints + 2 * size;
  ch->runs = ints + 3 * size;
  ch->run_target = ints + 4 * size + 1;
  ch->num_runs = ints + 5 * size + 1;
  ch->valid = reinterpret_cast<unsigned*>(ints + 5 * size + 2);
}

template <typename T>
__device__ EdgeChunk carve_edge_chunk(const TpCall& c, int size, unsigned char* raw, bool with_w = false) {
  EdgeChunk ch;
  ch.m_off = reinterpret_cast<int32_t*>(raw);
  int32_t* ints = reinterpret_cast<int32_t*>(raw + align16((c.num_paths + 1) * sizeof(int32_t)));
  carve_edge_indices(ints, size, &ch);
  unsigned char* m = reinterpret_cast<unsigned char*>(ints) + align16(edge_chunk_ints(size) * sizeof(int32_t));
  ch.m = m;
  ch.y_rows = m + (edge_contracts(c, with_w) ? align16(size * size_t(c.yc_width) * sizeof(T)) : 0);
  ch.dy_rows = static_cast<unsigned char*>(ch.y_rows) + (c.sh_lmax >= 0 ? align16(size * size_t(c.dim_y) * sizeof(T)) : 0);
  return ch;
}

// `n` 16-byte-aligned values from shared memory into registers, with vector loads.
template <int N, typename T>
__device__ __forceinline__ void load_aligned(const T* src, T* dst) {
  using Vec = std::conditional_t<sizeof(T) == 4, float4, double2>;
  constexpr int V = sizeof(Vec) / sizeof(T);
#pragma unroll
  for (int q = 0; q < N / V; ++q) {
    const Vec v = reinterpret_cast<const Vec*>(src)[q];
    const T* lanes = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int l = 0; l < V; ++l) dst[q * V + l] = lanes[l];
  }
#pragma unroll
  for (int r = N / V * V; r < N; ++r) dst[r] = src[r];
}

// Stages entries [k0, k0 + count) of unit `unit` (deterministic: node `unit`'s list; atomic: edges in
// order; count <= 32) and contracts y with every path's CG block per edge; returns after the block has
// synced. Warp 0 compacts the valid entries and finds the runs with ballots (no serial scan).
// Deterministic: `unit` is the node whose list is staged, `det_row` the row its runs write.
template <TpSlot SLOT, typename T, bool SH, bool CONTRACT = SLOT != TpSlot::kY>
__device__ void stage_edge_chunk(const TpCall& c, bool det, int64_t unit, int64_t det_row, int64_t k0, int count,
                                 const TpPath* paths, const T* pw, const T* y, EdgeChunk ch) {
  static_assert(kMaxEdgeChunk <= 32, "one warp stages a chunk");
  if (threadIdx.x < 32) {
    const int t = threadIdx.x;
    const unsigned all = 0xffffffffu, below = (1u << t) - 1;
    int64_t e = -1, rx = 0, rz = 0;
    bool ok = false;
    if (t < count) {
      const int64_t k = k0 + t;
      e = det && c.seg_edges ? c.seg_edges[k] : k;
      ok = det ? c.segment_edge(e, unit, &rx, &rz) : c.edge_rows(e, &rx, &rz);
    }
    const int32_t target = static_cast<int32_t>(det ? det_row : ok ? c.out_row(e, rx, rz) : -1);
    const unsigned valid = __ballot_sync(all, ok);
    const int slot = __popc(valid & below);
    const int prev = 31 - __clz(valid & below);  // previous valid lane, -1 if none
    const int32_t prev_target = __shfl_sync(all, target, prev >= 0 ? prev : t);
    const bool starts = ok && (prev < 0 || prev_target != target);
    const unsigned start_mask = __ballot_sync(all, starts);
    if (ok) {
      ch.edge[slot] = static_cast<int32_t>(e);
      ch.source[slot] = static_cast<int32_t>(SLOT == TpSlot::kX ? rz : rx);
      ch.source2[slot] = static_cast<int32_t>(rz);
      if (SH) core::tp_sh_row(c, y + e * 3, static_cast<T*>(ch.y_rows) + slot * c.dim_y);
    }
    if (starts) {
      const int r = __popc(start_mask & below);
      ch.runs[r] = slot;
      ch.run_target[r] = target;
    }
    if (t == 0) {
      *ch.valid = valid;
      const int num_runs = __popc(start_mask);
      ch.runs[num_runs] = __popc(valid);
      *ch.num_runs = num_runs;
      if (det && num_runs == 0) {  // no valid edge: one empty run, so that the node's row is stored
        ch.runs[1] = 0;
        ch.run_target[0] = static_cast<int32_t>(det_row);
        *ch.num_runs = 1;
      }
    }
  }
  __syncthreads();
  if constexpr (!CONTRACT) return;
  const int valid = ch.runs[*ch.num_runs];
  T* m = static_cast<T*>(ch.m);
  for (int task = threadIdx.x; task < c.num_paths * valid; task += blockDim.x) {
    const int32_t pi = task / valid, t = task % valid;  // consecutive threads: one path, several edges
    const int32_t e = ch.edge[t];
    const TpPath& p = paths[pi];
    const T* yp = (SH ? static_cast<const T*>(ch.y_rows) + t * c.dim_y : y + int64_t(e) * c.dim_y) + p.off2;
    core::uvu_dispatch(p, [&](auto l1, auto l2, auto lo) {
      core::uvu_contract_y<decltype(l1)::value, decltype(l2)::value, decltype(lo)::value>(
          yp, pw[pi], m + int64_t(t) * c.yc_width + ch.m_off[pi]);
    });
  }
  __syncthreads();
}

// Channel u of the irrep block written by the run of paths [first, last) (degree LT), for every run of
// the chunk's entries: sums over the run's edges and paths, then writes the target row's block.
// Paths outside, edges inside: the dispatch is paid once per path and run, and the edge loop is
// straight-line code whose loads (weights, gathered rows) are independent from one edge to the next.
template <TpSlot SLOT, int LT, typename T>
__device__ void uvu_edge_block(const TpCall& c, const TpPath* paths, int32_t first, int32_t last, int32_t u,
                               const EdgeChunk& ch, const T* x, const T* w, const T* z, T* out, Store how) {
  constexpr int DT = 2 * LT + 1;
  const int64_t w_stride = c.shared_w ? 0 : c.num_w;
  const int64_t src_stride = SLOT == TpSlot::kZ ? c.dim_x : c.dim_z;
  const T* m_rows = static_cast<const T*>(ch.m);
  const int num_runs = *ch.num_runs;
  for (int r = 0; r < num_runs; ++r) {
    const int t0 = ch.runs[r], t1 = ch.runs[r + 1];
    T acc[DT];
    for (int k = 0; k < DT; ++k) acc[k] = T(0);
    for (int32_t pi = first; pi < last; ++pi) {
      const TpPath& p = paths[pi];
      if (!core::uvu_path_active<SLOT>(p, c.with_unweighted)) continue;
      const bool weighted = p.off_w >= 0;
      const T* m_base = m_rows + ch.m_off[pi];
      core::degree_dispatch(((SLOT == TpSlot::kZ ? p.dim1 : p.dim_out) - 1) / 2, [&](auto l_other) {
        constexpr int L1 = SLOT == TpSlot::kZ ? decltype(l_other)::value : LT;
        constexpr int LO = SLOT == TpSlot::kZ ? LT : decltype(l_other)::value;
        constexpr int D1 = 2 * L1 + 1, DO = 2 * LO + 1, DS = SLOT == TpSlot::kZ ? D1 : DO;
        const T* src_base = SLOT == TpSlot::kZ ? x + p.off1 + int64_t(u) * D1 : z + p.off_out + int64_t(u) * DO;
        const T* w_base = w + p.off_w + u;
#pragma unroll 4
        for (int t = t0; t < t1; ++t) {
          const int32_t e = ch.edge[t];
          const T* src = src_base + int64_t(ch.source[t]) * src_stride;
          T s[DS], m[D1 * DO];
          for (int d = 0; d < DS; ++d) s[d] = src[d];
          load_aligned<D1 * DO>(m_base + int64_t(t) * c.yc_width, m);
          const T scale = weighted ? w_base[int64_t(e) * w_stride] : T(1);
          core::uvu_channel_contracted<L1, LO, SLOT>(s, s, m, scale, acc);
        }
      });
    }
    store_block<DT>(acc, out + int64_t(ch.run_target[r]) * c.out_width() + uvu_target<SLOT>(paths[first]) + int64_t(u) * DT,
                    how);
  }
}

// Slot w (per-edge weights): dw[e, off_w + u] = x[u, :] · M · z[u, :] for every weighted path, channel
// and valid entry of the chunk; rows of invalid edges are zero.
template <typename T>
__device__ void uvu_edge_weights(const TpCall& c, const TpPath* paths, const EdgeChunk& ch, int64_t k0, int count,
                                 const T* x, const T* z, T* out) {
  const T* m_rows = static_cast<const T*>(ch.m);
  const int valid = ch.runs[*ch.num_runs];
  for (int32_t pi = 0; pi < c.num_paths; ++pi) {
    const TpPath& p = paths[pi];
    if (!core::uvu_path_active<TpSlot::kW>(p, c.with_unweighted)) continue;
    const T* m_base = m_rows + ch.m_off[pi];
    core::degree_dispatch((p.dim1 - 1) / 2, [&](auto l1) {
      core::degree_dispatch((p.dim_out - 1) / 2, [&](auto lo) {
        constexpr int L1 = decltype(l1)::value, LO = decltype(lo)::value, D1 = 2 * L1 + 1, DO = 2 * LO + 1;
        for (int32_t u = threadIdx.x; u < p.mul1; u += blockDim.x) {
          const T* x_base = x + p.off1 + int64_t(u) * D1;
          const T* z_base = z + p.off_out + int64_t(u) * DO;
          T* w_base = out + p.off_w + u;
#pragma unroll 4
          for (int t = 0; t < valid; ++t) {
            const T* xu = x_base + int64_t(ch.source[t]) * c.dim_x;
            const T* zu = z_base + int64_t(ch.source2[t]) * c.dim_z;
            T xs[D1], zs[DO], m[D1 * DO];
            for (int i = 0; i < D1; ++i) xs[i] = xu[i];
            for (int k = 0; k < DO; ++k) zs[k] = zu[k];
            load_aligned<D1 * DO>(m_base + int64_t(t) * c.yc_width, m);
            w_base[int64_t(ch.edge[t]) * c.num_w] =
                core::uvu_channel_contracted<L1, LO, TpSlot::kW>(xs, zs, m, T(1), static_cast<T*>(nullptr));
          }
        }
      });
    });
  }
  const unsigned mask = *ch.valid;
  for (int t = 0; t < count; ++t)
    if (!((mask >> t) & 1u))
      for (int64_t k = threadIdx.x; k < c.num_w; k += blockDim.x) out[(k0 + t) * c.num_w + k] = T(0);
}

template <TpSlot SLOT, typename T, bool SH>
__global__ void __launch_bounds__(kThreads) tp_uvu_edge_kernel(TpCall c, int chunk_size,
                                                               const TpPath* __restrict__ paths_g,
                                                               const T* __restrict__ pw_g, const T* __restrict__ x,
                                                               const T* __restrict__ y, const T* __restrict__ w,
                                                               const T* __restrict__ z, T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  T* pw = reinterpret_cast<T*>(smem_raw + align16(c.num_paths * sizeof(TpPath)));
  const EdgeChunk ch = carve_edge_chunk<T>(c, chunk_size, smem_raw + uvu_table_bytes(c, sizeof(T)));
  stage_tables(c, paths_g, pw_g, paths, pw);
  if (threadIdx.x == 0) {
    int32_t off = 0;
    for (int32_t pi = 0; pi < c.num_paths; ++pi) {
      ch.m_off[pi] = off;
      off += core::uvu_contracted_stride(paths_g[pi].dim1, paths_g[pi].dim_out);
    }
    ch.m_off[c.num_paths] = off;
  }
  __syncthreads();
  // The host sized shared memory with c.yc_width (Python's sum of the same strides): never overrun it.
  if (ch.m_off[c.num_paths] != c.yc_width) return;

  const bool det = c.segmented();
  const int64_t units = det ? node_piece_units(c) : (c.rows + chunk_size - 1) / chunk_size;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    int64_t begin = unit * chunk_size, end = min(begin + chunk_size, c.rows), node = unit, row = unit;
    bool in_scratch = false;
    if (det && !segment_piece(c, unit, &node, &row, &in_scratch, &begin, &end)) continue;  // uniform over the block
    T* dst = in_scratch ? static_cast<T*>(c.seg_scratch) : out;
    for (int64_t k0 = begin;; k0 += chunk_size) {  // at least once: a node without edges stores zeros
      const int count = static_cast<int>(min(int64_t(chunk_size), end - k0));
      stage_edge_chunk<SLOT, T, SH>(c, det, node, row, k0, count, paths, pw, y, ch);
      if constexpr (SLOT == TpSlot::kW) {
        uvu_edge_weights(c, paths, ch, k0, count, x, z, out);
      } else {
        const Store how = !det ? Store::kAtomicAdd : k0 > begin ? Store::kAdd : Store::kSet;
        for_each_block_run<SLOT>(c, paths, [&](int32_t first, int32_t last, int32_t u, auto lt) {
          uvu_edge_block<SLOT, decltype(lt)::value>(c, paths, first, last, u, ch, x, w, z, dst, how);
        });
      }
      __syncthreads();  // the chunk's staging is reused
      if (k0 + chunk_size >= end) break;
    }
  }
}

// ---- the y gradient on edge chunks: a warp per entry, channels summed in registers ---------------------
//
// dy[r, off2 + j] = pw · Σ_{i,k} C[i,j,k] B[i,k] with B = Σ_u w[u] x[u,:] ⊗ z[u,:] (core::uvu_outer_add):
// each lane sums B over its channels (u = lane, lane + 32, ...), contracts it with the CG block once,
// and the warp sums the D2 results with a butterfly reduce-scatter. Rows are staged as edge chunks
// (stage_edge_chunk: compaction, gathered row ids; plain products too, rows being their own x and z
// rows); warp w owns entries w, w + 4, ... and adds each path's result into the entry's y-gradient row
// in shared memory, stored once per chunk: no atomics, a fixed order (deterministic in both modes).
// With W_GRAD (the fused backward) the same pass also writes the per-row weight gradient
// dw[r, off_w + u] = x[u,:] · M · z[u,:] from the staged y-contracted blocks (uvu_edge_weights' formula),
// so the two gradients read x, z and the weights once.
// (The previous y-gradient kernel, one block per row with a thread per channel, ran the CG entries per
// channel and reduced 128 partial rows through shared memory: 1.2 ms of the 2.5 ms fwd+bwd on H100.)

// Sums v[0..N) over the warp's 32 lanes (N a power of two, at most 32): each step halves the values a
// lane holds, exchanging the other half with the partner lane (N/2 + N/4 + ... shuffles, then one per
// remaining step). Returns in v[0] the sum of value `*index`; `*owner` marks one lane per index.
template <int N, int OFFSET, typename T>
__device__ __forceinline__ void warp_reduce_scatter_step(T* v, int lane, int* index) {
  if constexpr (N > 1) {
    constexpr int H = N / 2;
    const bool upper = lane & OFFSET;
#pragma unroll
    for (int q = 0; q < H; ++q) {
      const T send = upper ? v[q] : v[H + q];
      const T keep = upper ? v[H + q] : v[q];
      v[q] = keep + __shfl_xor_sync(0xffffffffu, send, OFFSET);
    }
    if (upper) *index += H;
    warp_reduce_scatter_step<H, OFFSET / 2>(v, lane, index);
  } else if constexpr (OFFSET > 0) {
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], OFFSET);
    warp_reduce_scatter_step<1, OFFSET / 2>(v, lane, index);
  }
}

template <int N, typename T>
__device__ __forceinline__ T warp_reduce_scatter(T* v, int* index, bool* owner) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N must be a power of two up to 32");
  const int lane = threadIdx.x % 32;
  *index = 0;
  warp_reduce_scatter_step<N, 16>(v, lane, index);
  *owner = (lane & (32 / N - 1)) == 0;
  return v[0];
}

__host__ __device__ constexpr int pow2_ceil(int n) { return n <= 1 ? 1 : 2 * pow2_ceil((n + 1) / 2); }

// One path for entry t of the chunk, by one warp: adds pw · C·B to the entry's y-gradient row (shared
// memory) and, with W_GRAD, stores the entry's weight gradients of the path.
template <int L1, int L2, int LO, bool W_GRAD, typename T>
__device__ void uvu_edge_y_path(const TpCall& c, const TpPath& p, T pw, const EdgeChunk& ch, int t, const T* x,
                                const T* w, const T* z, const T* m_row, T* dy_row, T* dw) {
  constexpr int D1 = 2 * L1 + 1, D2 = 2 * L2 + 1, DO = 2 * LO + 1, N = pow2_ceil(D2);
  const int lane = threadIdx.x % 32;
  const int64_t e = ch.edge[t];
  const T* x_base = x + int64_t(ch.source[t]) * c.dim_x + p.off1;
  const T* z_base = z + int64_t(ch.source2[t]) * c.dim_z + p.off_out;
  const bool weighted = p.off_w >= 0;
  const T* w_base = w + (c.shared_w ? 0 : e * c.num_w) + p.off_w;
  T b[D1 * DO];
  for (int q = 0; q < D1 * DO; ++q) b[q] = T(0);
  // R channels per lane at a time, all their loads issued before any use: the gathered rows come from
  // L2, and a lane waiting on one channel at a time is latency-bound. Fewer for the large blocks: one
  // kernel holds every degree combination, so the largest sets the register count of all problems
  // (4 channels of 3 ⊗ 3 everywhere: 168 registers in fp32, 3 blocks per SM, also for MACE-medium, whose
  // degrees are ≤ 2).
  constexpr int kMaxR = sizeof(T) == 4 ? 4 : 2, kShrink = D1 + DO <= 8 ? 1 : D1 + DO <= 12 ? 2 : 4;
  constexpr int R = kMaxR / kShrink > 0 ? kMaxR / kShrink : 1;
  for (int32_t u0 = lane; u0 < p.mul1; u0 += 32 * R) {
    T xs[R][D1], zs[R][DO], ws[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {
      const int32_t u = u0 + 32 * q;
      const bool ok = u < p.mul1;
      for (int i = 0; i < D1; ++i) xs[q][i] = ok ? x_base[int64_t(u) * D1 + i] : T(0);
      for (int k = 0; k < DO; ++k) zs[q][k] = ok ? z_base[int64_t(u) * DO + k] : T(0);
      ws[q] = ok && weighted ? w_base[u] : T(1);
    }
#pragma unroll
    for (int q = 0; q < R; ++q) {
      const int32_t u = u0 + 32 * q;
      if constexpr (W_GRAD)
        if (weighted && u < p.mul1)  // M read from shared memory per channel: registers are the limit
          dw[e * c.num_w + p.off_w + u] =
              core::uvu_channel_contracted<L1, LO, TpSlot::kW>(xs[q], zs[q], m_row, T(1), static_cast<T*>(nullptr));
      core::uvu_outer_add<L1, LO>(xs[q], zs[q], ws[q], b);  // a missing channel has x = 0
    }
  }
  T v[N];
  for (int j = 0; j < N; ++j) v[j] = T(0);
  core::uvu_contract_outer<L1, L2, LO>(b, v);
  int index;
  bool owner;
  const T sum = warp_reduce_scatter<N>(v, &index, &owner);
  if (owner && index < D2) dy_row[p.off2 + index] += pw * sum;
  __syncwarp();  // the next path's owner of an element may be another lane
}

// Slot y of channelwise calls (graph or plain), optionally fused with the per-row weight gradient
// (W_GRAD: `dw` [rows, num_w]; then y (data, or edge vectors with SH) is read for the contracted blocks).
template <typename T, bool W_GRAD, bool SH>
__global__ void __launch_bounds__(kThreads) tp_uvu_edge_y_kernel(TpCall c, int chunk_size,
                                                                 const TpPath* __restrict__ paths_g,
                                                                 const T* __restrict__ pw_g, const T* __restrict__ x,
                                                                 const T* __restrict__ y, const T* __restrict__ w,
                                                                 const T* __restrict__ z, T* __restrict__ out,
                                                                 T* __restrict__ dw) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  T* pw = reinterpret_cast<T*>(smem_raw + align16(c.num_paths * sizeof(TpPath)));
  const EdgeChunk ch = carve_edge_chunk<T>(c, chunk_size, smem_raw + uvu_table_bytes(c, sizeof(T)), W_GRAD);
  stage_tables(c, paths_g, pw_g, paths, pw);
  if (threadIdx.x == 0) {
    int32_t off = 0;
    for (int32_t pi = 0; pi < c.num_paths; ++pi) {
      ch.m_off[pi] = off;
      off += core::uvu_contracted_stride(paths_g[pi].dim1, paths_g[pi].dim_out);
    }
    ch.m_off[c.num_paths] = off;
  }
  __syncthreads();
  if (W_GRAD && ch.m_off[c.num_paths] != c.yc_width) return;  // never overrun the host-sized staging

  T* dy_rows = static_cast<T*>(ch.dy_rows);
  const T* m_rows = static_cast<const T*>(ch.m);
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t units = (c.rows + chunk_size - 1) / chunk_size;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t k0 = unit * chunk_size;
    const int count = static_cast<int>(min(int64_t(chunk_size), c.rows - k0));
    stage_edge_chunk<TpSlot::kY, T, SH, W_GRAD>(c, false, unit, unit, k0, count, paths, pw, y, ch);
    const int valid = ch.runs[*ch.num_runs];
    for (int i = threadIdx.x; i < valid * c.dim_y; i += blockDim.x) dy_rows[i] = T(0);
    __syncthreads();
    for (int32_t pi = 0; pi < c.num_paths; ++pi) {
      const TpPath& p = paths[pi];
      if (!core::uvu_path_active<TpSlot::kY>(p, c.with_unweighted) && !(W_GRAD && p.off_w >= 0)) continue;
      const bool y_active = core::uvu_path_active<TpSlot::kY>(p, c.with_unweighted);
      core::uvu_dispatch(p, [&](auto l1, auto l2, auto lo) {
        constexpr int L1 = decltype(l1)::value, L2 = decltype(l2)::value, LO = decltype(lo)::value;
        for (int t = warp; t < valid; t += warps)
          uvu_edge_y_path<L1, L2, LO, W_GRAD>(c, p, y_active ? pw[pi] : T(0), ch, t, x, w, z,
                                              m_rows + int64_t(t) * c.yc_width + ch.m_off[pi],
                                              dy_rows + t * c.dim_y, dw);
      });
    }
    __syncthreads();
    for (int i = threadIdx.x; i < valid * c.dim_y; i += blockDim.x)
      out[int64_t(ch.edge[i / c.dim_y]) * c.dim_y + i % c.dim_y] = dy_rows[i];
    const unsigned mask = *ch.valid;  // rows of dropped edges: zero gradients
    for (int t = 0; t < count; ++t)
      if (!((mask >> t) & 1u)) {
        for (int j = threadIdx.x; j < c.dim_y; j += blockDim.x) out[(k0 + t) * c.dim_y + j] = T(0);
        if (W_GRAD)
          for (int64_t k = threadIdx.x; k < c.num_w; k += blockDim.x) dw[(k0 + t) * c.num_w + k] = T(0);
      }
    __syncthreads();  // the chunk's staging is reused
  }
}

// ---- compiled shapes on graphs: the convolution's forward and backward -------------------------------
//
// The per-channel code of the compiled shapes (core/tp_uvu_shape.h) on edges: x rows gathered by
// sender, the output (forward) or cotangent (backward) rows by receiver, y rows (data, or spherical
// harmonics computed from the edge vectors) staged per chunk of edges in shared memory and read back
// into registers; a thread per channel. The table-driven edge kernels above spent ~1.5k warp
// instructions per MACE-medium edge on path loops, degree dispatch and per-path re-gathers of x (ncu,
// session 12); here a channel's x, its weights and the edge's y are read once per edge and every path is
// straight-line code.
//
// Bytes per MACE-medium edge (U = 128, 8 paths, fp32): weights 4.1 kB (the forward's DRAM traffic,
// 0.21 ms for E = 150k at 2.9 TB/s), y 64 B; x (2 kB) and the output or cotangent rows (4.6 kB) are
// gathered from L2 (N = 5k nodes: 2 + 23 MB). The backward also writes dw (4.1 kB) and dy.
//
// L2 cache hints. Each node row is gathered ~30 times (E / N) while the per-edge arrays (weights, their
// cotangents and gradients: 614 MB for MACE-medium) stream through the 50 MB L2 once; with plain
// accesses the stream evicts node rows, which then come from DRAM again (ncu, session 15: the forward
// ran at 78% of the DRAM peak for 0.31 ms, ~0.81 GB, for ~0.64 GB of data; with the hints it reads
// 660 MB). So node rows are gathered with an evict-last policy (kKeepNodeRows), and per-edge streams
// can be loaded or stored evict-first (ld/st.global.cs). Measured
// per kernel (H100, MACE-medium N = 5k E = 150k fp32, session 21, kernel ms; none / keep node rows /
// + streaming loads / + streaming loads and stores): forward 0.313 / 0.295 / 0.286 / 0.286; dx 0.360 /
// 0.356 / 0.293 / 0.292; dw 0.306 / 0.286 / – / 0.281; dy+dw 0.567 / 0.546 / 0.591 / 0.583; dx+dy+dw
// 0.650 / 0.629 / 0.697 / 0.688; the second-order pass 1.058 / 1.040 / 1.026 / 0.997. The passes that
// both read the weights and write their gradient lose with streaming loads; each kernel below takes the
// set that measured best.
enum CacheHints : int { kKeepNodeRows = 1, kStreamLoads = 2, kStreamStores = 4 };

// L2 policies: keep (node rows, gathered many times), stream (read once), or neither.
enum class L2Policy { kKeep, kStream, kNormal };
__device__ __forceinline__ uint64_t l2_policy(L2Policy which) {
  uint64_t policy = 0;
#if __CUDA_ARCH__ >= 800
  if (which == L2Policy::kKeep) asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  else if (which == L2Policy::kStream) asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  else asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(policy));
#endif
  return policy;
}

// A per-edge array's element, read once.
template <int HINTS, typename T>
__device__ __forceinline__ T load_edge(const T* p) {
  if constexpr ((HINTS & kStreamLoads) != 0) return __ldcs(p);
  else return *p;
}
// A per-edge array's element, written once.
template <int HINTS, typename T>
__device__ __forceinline__ void store_edge(T* p, T v) {
  if constexpr ((HINTS & kStreamStores) != 0) __stcs(p, v);
  else *p = v;
}
// A node row's element (gathered once per edge of the node).
template <int HINTS, typename T>
__device__ __forceinline__ T load_node(const T* p) {
#if __CUDA_ARCH__ >= 800  // (createpolicy and L2::cache_hint: sm_80 and later)
  if constexpr ((HINTS & kKeepNodeRows) != 0) {
    const uint64_t policy = l2_policy(L2Policy::kKeep);
    T v;
    if constexpr (sizeof(T) == 4) asm("ld.global.L2::cache_hint.f32 %0, [%1], %2;" : "=f"(v) : "l"(p), "l"(policy));
    else asm("ld.global.L2::cache_hint.f64 %0, [%1], %2;" : "=d"(v) : "l"(p), "l"(policy));
    return v;
  }
#endif
  return *p;
}
// core::shape_gather with load_node.
template <int HINTS, uint32_t LIST, typename T>
__device__ __forceinline__ void gather_node(const T* row, int32_t mul, int32_t u, T* cu) {
  core::shape_for_each<LIST>(mul, u, [&](int64_t at, int k) { cu[k] = load_node<HINTS>(row + at); });
}

// Channel accesses by warps. A degree block of a warp's 32 consecutive channels is 32·D contiguous values
// of a row; a thread reading its channel's D components strides by D across the lanes, so each load
// instruction touches D times the sectors it uses and the L2 serves every sector D times (ncu of the
// first version of these kernels: L2 throughput 84% against DRAM 76%). Instead the warp loads the block
// with consecutive addresses into its shared buffer and each lane reads its channel back (odd strides:
// no bank conflicts); scatters go the other way. All 32 lanes call these (lanes past `mul` get zeros /
// store nothing); `buf` holds the warp's 32 · (2 kCgMaxL + 1) values.
// Measured (H100, MACE-medium conv, E = 150k): the forward gains (0.338 → 0.312 ms); the backward,
// which runs at 4 blocks per SM, loses (0.850 → 0.933 ms: the transposes lengthen each edge's chain of
// dependent steps, and with 16 warps per SM latency is what limits it), and so do the plain products'
// shaped kernels (MACE-large forward 0.41 → 0.50 ms): those keep strided accesses.
constexpr int kWarpBufElems = 32 * (2 * core::kCgMaxL + 1);

template <uint32_t LIST, int HINTS, typename T>
__device__ __forceinline__ void warp_shape_gather(const T* row, int32_t mul, int32_t u0, T* buf, T* cu) {
  const int lane = threadIdx.x % 32;
  const int32_t n_channels = min(32, mul - u0);
  // Every block's loads first (independent, all in flight at once), then the transposes.
  T raw[core::shape_dim(LIST)];
  core::static_for<core::kCgMaxL + 1>([&](auto l) {
    constexpr int L = decltype(l)::value, D = 2 * L + 1, OFF = core::shape_offset(LIST, L);
    if constexpr (core::shape_has(LIST, L)) {
      const T* src = row + int64_t(mul) * OFF + int64_t(u0) * D;
      for (int k = 0; k < D; ++k)
        raw[OFF + k] = k * 32 + lane < n_channels * D ? load_node<HINTS>(src + k * 32 + lane) : T(0);
    }
  });
  core::static_for<core::kCgMaxL + 1>([&](auto l) {
    constexpr int L = decltype(l)::value, D = 2 * L + 1, OFF = core::shape_offset(LIST, L);
    if constexpr (core::shape_has(LIST, L) && D == 1) {
      cu[OFF] = raw[OFF];
    } else if constexpr (core::shape_has(LIST, L)) {
      for (int k = 0; k < D; ++k) buf[k * 32 + lane] = raw[OFF + k];
      __syncwarp();
      for (int i = 0; i < D; ++i) cu[OFF + i] = buf[lane * D + i];
      __syncwarp();  // the buffer is reused
    }
  });
}

// store(pointer, value) for each value of the warp's channels, at consecutive addresses across lanes.
template <uint32_t LIST, typename T, typename Store>
__device__ __forceinline__ void warp_shape_scatter(const T* cu, int32_t mul, int32_t u0, T* buf, T* row, Store&& store) {
  const int lane = threadIdx.x % 32;
  const int32_t n_channels = min(32, mul - u0);
  core::static_for<core::kCgMaxL + 1>([&](auto l) {
    constexpr int L = decltype(l)::value, D = 2 * L + 1, OFF = core::shape_offset(LIST, L);
    if constexpr (core::shape_has(LIST, L)) {
      T* dst = row + int64_t(mul) * OFF + int64_t(u0) * D;
      if constexpr (D == 1) {
        if (lane < n_channels) store(dst + lane, cu[OFF]);
      } else {
        for (int i = 0; i < D; ++i) buf[lane * D + i] = cu[OFF + i];
        __syncwarp();
        for (int k = 0; k < D; ++k)
          if (k * 32 + lane < n_channels * D) store(dst + k * 32 + lane, buf[k * 32 + lane]);
        __syncwarp();
      }
    }
  });
}


// Edges per chunk in atomic mode: as even a split of the edges over whole waves of resident blocks as
// chunks of at most kMaxEdgeChunk allow, so that no partial last wave holds the kernel (ncu of the first
// version: 4.4 waves of 32-edge chunks for E = 150k, up to 20% of the time in the tail).
inline int balanced_chunk(int64_t rows, int64_t resident_blocks) {
  const int64_t slots = std::max<int64_t>(resident_blocks, 1);
  const int64_t waves = (rows + slots * kMaxEdgeChunk - 1) / (slots * kMaxEdgeChunk);
  const int64_t units = std::max<int64_t>(waves, 1) * slots;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>((rows + units - 1) / units, 1), kMaxEdgeChunk));
}

// ---- per-edge rows staged by the Tensor Memory Accelerator (sm_90): the edge kernels' ring -----------
//
// The edge kernels of compiled shapes read, per edge, rows of a few operands: the edge's weight row (DRAM),
// the sender's x row and (gradients) the receiver's cotangent row (L2). With each lane loading its own
// channel's values, a warp keeps one edge's loads in flight (a register prefetch of the next edge at
// most) and pays their latency in its chain of dependent steps. Here a producer warp (the block's last;
// one lane) copies the rows of each of the next `depth` edges into a ring of shared-memory slots with
// bulk copies (cp.async.bulk: one instruction per row, no registers held), signalling a `full` mbarrier
// per slot with the bytes landed; the consumer warps (one per 32 channels) wait on it, read their
// channels' values into registers, and each of their threads arrives on the slot's `empty` barrier,
// which the producer waits on before reusing it. Both sides walk the same items in the same order with
// a RingCursor: slot s, and the parity of the round (phase) in which the ring is. A slot holds up to
// kRingRows rows (bytes[i] == 0: row i absent from every item); an item may leave a row out (the x row
// of a run's later edges).
constexpr int kRingRows = 3;

struct EdgeRing {
  uint64_t* full;   // [depth]
  uint64_t* empty;  // [depth]
  unsigned char* slots;
  int depth;
  uint32_t bytes[kRingRows], offset[kRingRows], slot_bytes;
  __device__ const unsigned char* row(int slot, int i) const { return slots + size_t(slot) * slot_bytes + offset[i]; }
};

struct RingCursor {
  int slot = 0;
  uint32_t phase = 0;
  __device__ void advance(int depth) {
    if (++slot == depth) slot = 0, phase ^= 1;
  }
};

// The bytes of a slot's rows w, x and z (the cotangent), from their widths in elements (0: absent).
struct RingRows {
  uint32_t bytes[kRingRows];
};
template <typename T>
__host__ __device__ inline RingRows edge_ring_rows(int64_t w, int64_t x, int64_t z) {
  return {{static_cast<uint32_t>(w * sizeof(T)), static_cast<uint32_t>(x * sizeof(T)),
           static_cast<uint32_t>(z * sizeof(T))}};
}

__host__ __device__ constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }
// Dynamic shared memory of a ring: its barriers, then `depth` slots of the rows' bytes (each row 128-aligned).
__host__ __device__ inline size_t ring_bytes(int depth, const RingRows& rows) {
  size_t slot = 0;
  for (uint32_t b : rows.bytes) slot += align128(b);
  return align128(2 * depth * sizeof(uint64_t)) + depth * slot;
}

__device__ inline EdgeRing carve_edge_ring(unsigned char* smem, int depth, const RingRows& rows) {
  EdgeRing r;
  r.full = reinterpret_cast<uint64_t*>(smem);
  r.empty = r.full + depth;
  r.slots = smem + align128(2 * depth * sizeof(uint64_t));
  r.depth = depth;
  uint32_t at = 0;
  for (int i = 0; i < kRingRows; ++i) {
    r.bytes[i] = rows.bytes[i];
    r.offset[i] = at;
    at += static_cast<uint32_t>(align128(rows.bytes[i]));
  }
  r.slot_bytes = at;
  return r;
}

// The PTX below is sm_90's; the launchers pick a ring only on such devices (older targets compile traps).
#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(bar)), "r"(count) : "memory");
#else
  __trap();
#endif
}
// Makes the barriers' initialization visible to the async proxy (the bulk copies) before first use.
__device__ __forceinline__ void mbar_init_fence() {
#if __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_address(bar)) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_address(bar)), "r"(bytes) : "memory");
#endif
}
// Until the phase of parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .pred done;\n jbm_wait:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra jbm_wait;\n}" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
#endif
}
// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to shared memory, completing
// `bytes` of the barrier's transaction count; `policy` an L2 cache policy (createpolicy).
__device__ __forceinline__ void bulk_copy_to_shared(const void* dst, const void* src, uint32_t bytes, uint64_t* bar,
                                                    uint64_t policy) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          smem_address(dst)),
      "l"(src), "r"(bytes), "r"(smem_address(bar)), "l"(policy)
      : "memory");
#endif
}

// Producer side (one lane): an item for each of entries 0 .. count-1 whose sources(t, src) is true, with
// the rows src[i] != null (row i's bytes from src[i]). A slot is free once the consumers arrived on its
// `empty` barrier in the previous round (in round 0 the wait on parity 1 returns at once: a fresh
// barrier counts the phase before its first as complete).
template <typename Sources>
__device__ void ring_produce(const EdgeRing& ring, int count, RingCursor* at, const L2Policy (&policies)[kRingRows],
                             Sources&& sources) {
  uint64_t policy[kRingRows];
  for (int i = 0; i < kRingRows; ++i) policy[i] = l2_policy(policies[i]);
  for (int t = 0; t < count; ++t) {
    const void* src[kRingRows] = {};
    if (!sources(t, src)) continue;
    const int s = at->slot;
    mbar_wait(&ring.empty[s], at->phase ^ 1);
    uint32_t bytes = 0;
    for (int i = 0; i < kRingRows; ++i) bytes += src[i] ? ring.bytes[i] : 0;
    mbar_arrive_expect_tx(&ring.full[s], bytes);
    for (int i = 0; i < kRingRows; ++i)
      if (src[i]) bulk_copy_to_shared(ring.row(s, i), src[i], ring.bytes[i], &ring.full[s], policy[i]);
    at->advance(ring.depth);
  }
}

// The block's ring in dynamic shared memory, its barriers initialized (before the block's first sync).
template <int CONSUMER_WARPS>
__device__ EdgeRing start_edge_ring(unsigned char* smem, int depth, const RingRows& rows) {
  EdgeRing ring = carve_edge_ring(smem, depth, rows);
  if (threadIdx.x == 0) {
    for (int s = 0; s < depth; ++s) {
      mbar_init(&ring.full[s], 1);                     // the producer's arrive (with the bytes expected)
      mbar_init(&ring.empty[s], CONSUMER_WARPS * 32);  // one arrive per consumer thread
    }
    mbar_init_fence();
  }
  return ring;
}

// Consumer side, every lane of a consumer warp: waits for the cursor's slot, lets read(slot) copy the
// lane's values out, then releases the slot (each lane arrives: an arrive releases the arriving thread's
// own reads; one elected lane after __syncwarp() was reported as a race by compute-sanitizer's racecheck
// between the consumers' reads and the next round's bulk copy) and advances.
template <typename Read>
__device__ __forceinline__ void ring_consume(const EdgeRing& ring, RingCursor* at, Read&& read) {
  mbar_wait(&ring.full[at->slot], at->phase);
  read(at->slot);
  mbar_arrive(&ring.empty[at->slot]);  // the slot is read: the producer may refill it
  at->advance(ring.depth);
}

// Slot z (conv / sh_conv forward), both modes: chunks staged as in tp_uvu_edge_kernel (stage_edge_chunk:
// compaction, runs of equal target, SH rows), then each warp takes 32 channels and each lane sums its
// channel over each run's edges in registers (core::uvu_shape_channel_add) and writes the run's row once
// — atomic adds, or stores in the deterministic mode's fixed order. `chunk`: edges per chunk in atomic
// mode (balanced_chunk); node lists are taken kMaxEdgeChunk at a time. Each lane loads the next edge's
// weights (the DRAM stream) before this edge's gather and products, so a load's latency overlaps one
// edge's work. fp32 is compiled for 6 blocks per SM (80 registers, no spills): H100, MACE-medium
// N = 5k, E = 150k, session 17, kernel ms in one build: no prefetch at 8 blocks (64 registers, spills)
// 0.326, prefetch at 8 blocks 0.352, prefetch at 6 blocks 0.314 (det 0.325 / 0.346 / 0.329). This is the
// fallback where the ring below does not apply (fp64, older GPUs, misaligned rows, > kThreads channels).
//
// RING (sm_90, fp32, per-edge weights, at most kThreads channels): the weight and x rows come through an
// EdgeRing of kEdgeRingDepth slots filled by a producer warp (the block's fifth) instead of each lane's
// loads. 64 registers, 6 blocks per SM. H100, same problem, session 22, one build, kernel ms: lanes' loads
// 0.286 (twice); ring depth 2: 0.246, 3: 0.242, 4: 0.243 / 0.241, 6: 0.243, 8: 0.246. The depth barely
// matters: what the ring removes is each lane's share of the loads (8 weight loads, the x gather and its
// transposes per edge) and their latency in every warp's chain, not a shortage of bytes in flight.
template <typename T>
constexpr int kShapedEdgeMinBlocks = sizeof(T) == 4 ? 6 : 1;
constexpr int kRingThreads = kThreads + 32;
constexpr int kRingMinBlocks = 6;
constexpr int kEdgeRingDepth = 3;

template <uint32_t X, uint32_t Y, uint32_t O, typename T, bool SH, bool RING>
__global__ void __launch_bounds__(RING ? kRingThreads : kThreads, RING ? kRingMinBlocks : kShapedEdgeMinBlocks<T>)
    tp_uvu_shaped_edge_kernel(TpCall c, int chunk, int ring_depth, const TpPath* __restrict__ paths_g,
                              const T* __restrict__ pw_g, const T* __restrict__ x, const T* __restrict__ y,
                              const T* __restrict__ w, T* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if constexpr (RING) {  // launched on sm_90 and later only (edge_ring_depth): no code for older targets
    __trap();
    return;
  }
#endif
  using S = core::UvuShape<X, Y, O>;
  constexpr int kSize = kMaxEdgeChunk, kWarps = kThreads / 32, kHints = kKeepNodeRows | kStreamLoads;
  __shared__ T pw[S::kNumPaths];
  __shared__ int32_t ints[edge_chunk_ints(kSize)];
  __shared__ T y_rows[kSize * S::kDimY];
  __shared__ T warp_bufs[kWarps][kWarpBufElems];
  extern __shared__ __align__(128) unsigned char ring_smem[];
  EdgeChunk ch;
  carve_edge_indices(ints, kSize, &ch);
  ch.y_rows = y_rows;
  const int32_t mul = static_cast<int32_t>(c.dim_x / S::kDimX);
  load_shape_path_weights<S::kNumPaths>(paths_g, pw_g, c.num_paths, mul, pw);
  EdgeRing ring{};  // RING: rows w, x
  if constexpr (RING)
    ring = start_edge_ring<kWarps>(ring_smem, ring_depth, edge_ring_rows<T>(c.num_w, c.dim_x, 0));
  __syncthreads();
  RingCursor at;  // RING: this thread's place in the ring (the producer lane's and each consumer's)
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T* buf = warp_bufs[min(warp, kWarps - 1)];  // (RING's producer warp scatters nothing)
  const int64_t w_stride = c.shared_w ? 0 : c.num_w;
  const bool det = c.segmented();
  const int step = det ? kSize : chunk;
  const int64_t units = det ? node_piece_units(c) : (c.rows + chunk - 1) / chunk;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    int64_t begin = unit * chunk, end = min(begin + chunk, c.rows), node = unit, row = unit;
    bool in_scratch = false;
    if (det && !segment_piece(c, unit, &node, &row, &in_scratch, &begin, &end)) continue;  // uniform over the block
    T* dst = in_scratch ? static_cast<T*>(c.seg_scratch) : out;
    for (int64_t k0 = begin;; k0 += step) {  // at least once: a node without edges stores zeros
      const int count = static_cast<int>(min(int64_t(step), end - k0));
      stage_edge_chunk<TpSlot::kZ, T, SH, false>(c, det, node, row, k0, count, nullptr, static_cast<const T*>(nullptr),
                                                 y, ch);
      const int valid = ch.runs[*ch.num_runs];
      if constexpr (!SH) {
        for (int i = threadIdx.x; i < valid * S::kDimY; i += blockDim.x)
          y_rows[i] = y[int64_t(ch.edge[i / S::kDimY]) * c.dim_y + i % S::kDimY];
        __syncthreads();
      }
      const Store how = !det ? Store::kAtomicAdd : k0 > begin ? Store::kAdd : Store::kSet;
      const int num_runs = *ch.num_runs;
      if constexpr (RING) {
        if (warp == kWarps) {  // the producer
          if (lane == 0)
            ring_produce(ring, valid, &at, {L2Policy::kStream, L2Policy::kKeep, L2Policy::kNormal},
                         [&](int t, const void** src) {
                           src[0] = w + int64_t(ch.edge[t]) * c.num_w;
                           src[1] = x + int64_t(ch.source[t]) * c.dim_x;
                           return true;
                         });
          __syncwarp();
        } else {  // a consumer: channels warp * 32 + lane (the launcher checked mul <= kThreads)
          const int32_t u0 = warp * 32, u = u0 + lane;
          const bool active = u < mul;
          for (int r = 0; r < num_runs; ++r) {
            T zu[S::kDimO];
            for (int k = 0; k < S::kDimO; ++k) zu[k] = T(0);
            for (int t = ch.runs[r]; t < ch.runs[r + 1]; ++t) {
              T xu[S::kDimX], scale[S::kNumPaths];
              ring_consume(ring, &at, [&](int s) {
                const T* w_row = reinterpret_cast<const T*>(ring.row(s, 0));
                for (int n = 0; n < S::kNumPaths; ++n) scale[n] = active ? pw[n] * w_row[n * mul + u] : T(0);
                for (int k = 0; k < S::kDimX; ++k) xu[k] = T(0);
                if (active) core::shape_gather<X>(reinterpret_cast<const T*>(ring.row(s, 1)), mul, u, xu);
              });
              core::uvu_shape_channel_add<X, Y, O>(xu, y_rows + t * S::kDimY, scale, zu);
            }
            if (u0 < mul)
              warp_shape_scatter<O>(zu, mul, u0, buf, dst + int64_t(ch.run_target[r]) * c.dim_z,
                                    [how](T* p, T v) { store_one(v, p, how); });
          }
        }
      } else {  // each lane loads its own operands
        for (int32_t u0 = warp * 32; u0 < mul; u0 += blockDim.x) {  // warp-uniform: the lanes' channels u0 + lane
          const int32_t u = u0 + lane;
          const bool active = u < mul;
          T w_next[S::kNumPaths];  // the next edge's weights, loaded while this edge's products run
          auto load_w = [&](int t) {
            const int64_t e = ch.edge[t];
            for (int n = 0; n < S::kNumPaths; ++n)
              w_next[n] = active ? load_edge<kHints>(w + e * w_stride + int64_t(n) * mul + u) : T(0);
          };
          if (valid > 0) load_w(0);
          for (int r = 0; r < num_runs; ++r) {
            T zu[S::kDimO];
            for (int k = 0; k < S::kDimO; ++k) zu[k] = T(0);
            for (int t = ch.runs[r]; t < ch.runs[r + 1]; ++t) {
              T xu[S::kDimX], scale[S::kNumPaths];
              for (int n = 0; n < S::kNumPaths; ++n) scale[n] = pw[n] * w_next[n];
              if (t + 1 < valid) load_w(t + 1);
              warp_shape_gather<X, kHints>(x + int64_t(ch.source[t]) * c.dim_x, mul, u0, buf, xu);
              core::uvu_shape_channel_add<X, Y, O>(xu, y_rows + t * S::kDimY, scale, zu);
            }
            warp_shape_scatter<O>(zu, mul, u0, buf, dst + int64_t(ch.run_target[r]) * c.dim_z,
                                  [how](T* p, T v) { store_one(v, p, how); });
          }
        }
      }
      __syncthreads();  // the chunk's staging is reused
      if (k0 + step >= end) break;
    }
  }
}

// Deterministic edge-gradient units past the sender lists' pieces: the list's tail (edges whose sender is
// out of range) in chunks of kMaxEdgeChunk, needed when dy or dw is asked for (those edges' zeros); an
// upper bound (the tail's length is device data: the kernel skips the units past it).
__host__ __device__ inline int64_t edge_grads_tail_units(const TpCall& c, int grads) {
  return grads & (core::kGradY | core::kGradW) ? (c.rows + kMaxEdgeChunk - 1) / kMaxEdgeChunk : 0;
}

// Gradients of a graph call of a compiled shape, per edge: GRADS (core::ShapeGrads) among dy (the gradient
// of the edge's y values: SH values for sh_conv), dw, and dx (the node features' gradient, summed over each
// sender's edges). All three are the whole backward of conv / sh_conv in one pass; fewer are the
// transposes of the force-training step's second-order calls; only the operands the mask reads are
// loaded (core::grads_read_*). Edges are taken in the order `c.seg_edges` (the sender-sorted list when dx
// is asked for; null: edge order), and each thread takes a channel: core::uvu_shape_channel_grads per
// channel and edge (strided channel accesses: see warp_shape_gather). Blocks take units of the list:
// * atomic (DET false): `chunk` entries (balanced_chunk); dx is summed in registers over each run of
//   edges of one sender within the chunk and added to the sender's row once per run by atomic adds (per
//   edge, the atomics held the pass at the L2's atomic rate: 77 M of them for MACE-medium's 150k edges);
// * deterministic (DET, dx asked for): a piece of one sender's list (segment_piece over the sender
//   lists; c.seg_pieces / seg_scratch split long lists as a slot-x call's), whose dx is summed in the
//   list's order and stored (a later piece's in its scratch row: add_segment_pieces), then, when dy or
//   dw is asked for, the list's tail (edges whose sender is out of range: zero gradients), kMaxEdgeChunk
//   entries at a time.
// x is loaded once per run of one sender. Each edge's dy partials are summed over a warp's channels
// (warp_sum_pairs) into shared memory and over the warps once per chunk. dy and dw are written once per
// edge, in a fixed order (deterministic in both modes).
//
// RING (as the forward's; sm_90, fp32, at most kThreads channels): the weight row (masks with dx or dy),
// the receiver's cotangent row and the sender's x row (masks with dy or dw; copied when the sender
// changes) come through an EdgeRing filled by a producer warp, the block's fifth. At most 96 registers
// (4 blocks of 160 threads per SM; the whole backward needed 128 with its register prefetch, which the
// ring replaces). H100, MACE-medium N = 5k, E = 150k, session 22, one build, kernel ms, lanes' loads ->
// ring (two rounds agreed to 0.002): dx 0.293 -> 0.280, dw 0.280 -> 0.260, dy+dw 0.542 -> 0.474, the
// whole backward 0.629 -> 0.605 (MACE-large conv, E = 100k: 1.678 -> 1.483, det 1.609 -> 1.419).
template <uint32_t X, uint32_t Y, uint32_t O, int GRADS, typename T, bool SH, bool DET, bool RING>
__global__ void __launch_bounds__(RING ? kRingThreads : kThreads, kShapedGradsMinBlocks<T>)
    tp_uvu_shaped_edge_grads_kernel(TpCall c, int chunk, int ring_depth, const TpPath* __restrict__ paths_g,
                                    const T* __restrict__ pw_g,
                                    const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w,
                                    const T* __restrict__ dz, T* __restrict__ dx, T* __restrict__ dy,
                                    T* __restrict__ dw) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if constexpr (RING) {  // launched on sm_90 and later only (edge_ring_depth): no code for older targets
    __trap();
    return;
  }
#endif
  using S = core::UvuShape<X, Y, O>;
  static_assert(S::kDimY <= kGradsMaxDimY, "y of degrees above 3");
  constexpr bool kDx = GRADS & core::kGradX, kDy = GRADS & core::kGradY, kDw = GRADS & core::kGradW;
  constexpr bool kReadX = core::grads_read_x(GRADS), kReadY = core::grads_read_y(GRADS);
  // Streaming loads of the weights lose where dw is also written (cache hints above); streaming stores
  // were measured only for dw alone.
  constexpr int kHints = kKeepNodeRows | (kDw ? (GRADS == core::kGradW ? kStreamStores : 0) : kStreamLoads);
  // The whole backward (all three gradients) loads the next edge's weights and cotangent row while this
  // edge's products run (H100, MACE-medium, session 17: 0.686 -> 0.651 ms). The smaller masks were
  // slower with it (dy+dw 0.568 -> 0.612 ms: more registers, one block less per SM).
  constexpr bool PF = !RING && GRADS == (core::kGradX | core::kGradY | core::kGradW);
  constexpr bool kReadW = core::grads_read_w(GRADS);
  static_assert(kReadY || !SH, "edge vectors are read only by masks that read y");
  // (DET a template argument: the atomic mode's dx pass lost 3-7% to the runtime flag, H100, session 18.)
  static_assert(kDx || !DET, "the deterministic units serve dx");
  constexpr int kSize = kMaxEdgeChunk, kWarps = kThreads / 32;
  __shared__ T pw[S::kNumPaths];
  __shared__ int32_t edge[kSize], src_x[kSize], src_z[kSize];  // src_x < 0: the edge is dropped
  __shared__ T y_rows[kReadY ? kSize : 1][S::kDimY];
  __shared__ T dy_warps[kDy ? kSize : 1][kWarps][S::kDimY];
  extern __shared__ __align__(128) unsigned char ring_smem[];
  const int32_t mul = static_cast<int32_t>(c.dim_x / S::kDimX);
  load_shape_path_weights<S::kNumPaths>(paths_g, pw_g, c.num_paths, mul, pw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  EdgeRing ring{};  // RING: rows w, x, z (those the mask reads)
  if constexpr (RING)
    ring = start_edge_ring<kWarps>(ring_smem, ring_depth,
                                   edge_ring_rows<T>(kReadW ? c.num_w : 0, kReadX ? c.dim_x : 0, c.dim_z));
  RingCursor at;
  const bool consumer = !RING || warp < kWarps;
  const int64_t pieces = DET ? node_piece_units(c) : 0;
  const int64_t units = DET ? pieces + edge_grads_tail_units(c, GRADS) : (c.rows + chunk - 1) / chunk;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    int64_t begin = unit * chunk, end = min(begin + chunk, c.rows), node = -1, row = -1;
    bool in_scratch = false;
    if (DET && unit < pieces) {
      if (!segment_piece(c, unit, &node, &row, &in_scratch, &begin, &end)) continue;  // uniform over the block
    } else if (DET) {  // the tail of the list: edges without a valid sender
      begin = min(max(int64_t(c.seg_offsets[c.nodes]), int64_t(0)), c.rows) + (unit - pieces) * kSize;
      if (begin >= c.rows) continue;
      end = min(begin + kSize, c.rows);
    }
    T* dx_dst = DET && node >= 0 ? (in_scratch ? static_cast<T*>(c.seg_scratch) : dx) + row * c.dim_x : nullptr;
    for (int64_t k0 = begin;; k0 += kSize) {  // at least once: a sender without edges stores zeros
      const int count = static_cast<int>(min(int64_t(kSize), end - k0));
      if (threadIdx.x < count) {
        const int64_t k = k0 + threadIdx.x;
        const int64_t e = c.seg_edges ? int64_t(c.seg_edges[k]) : k;
        const bool in_range = e >= 0 && e < c.rows;  // (a list is a permutation of the edges: always true)
        int64_t rx = -1, rz = -1;
        const bool ok = in_range && c.edge_rows(e, &rx, &rz);
        edge[threadIdx.x] = in_range ? static_cast<int32_t>(e) : -1;  // -1: no rows of this entry are written
        src_x[threadIdx.x] = ok ? static_cast<int32_t>(rx) : -1;
        src_z[threadIdx.x] = ok ? static_cast<int32_t>(rz) : -1;
        if constexpr (kReadY) {
          if (SH && ok) core::tp_sh_row(c, y + e * 3, y_rows[threadIdx.x]);
          if (!SH && ok)
            for (int j = 0; j < S::kDimY; ++j) y_rows[threadIdx.x][j] = y[e * c.dim_y + j];
        }
      }
      __syncthreads();
      if constexpr (RING) {
        if (warp == kWarps && lane == 0) {  // the producer: an item per valid entry
          int32_t prev_rx = -1;             // (the x row only when the sender changes, as xu below)
          ring_produce(ring, count, &at, {kDw ? L2Policy::kNormal : L2Policy::kStream, L2Policy::kKeep, L2Policy::kKeep},
                       [&](int t, const void** src) {
                         const int32_t rx = src_x[t];
                         if (rx < 0) return false;
                         if (kReadW) src[0] = w + int64_t(edge[t]) * c.num_w;
                         if (kReadX && rx != prev_rx) src[1] = x + int64_t(rx) * c.dim_x;
                         src[2] = dz + int64_t(src_z[t]) * c.dim_z;
                         prev_rx = rx;
                         return true;
                       });
        }
      }
      for (int32_t u0 = 0; consumer && u0 < mul; u0 += kThreads) {  // block-uniform: thread u0 + threadIdx.x's channel
        const int32_t u = u0 + threadIdx.x;
        const bool active = u < mul;
        T xu[S::kDimX], acc[kDx ? S::kDimX : 1];
        int32_t x_row = -1;  // the sender whose x components xu holds
        for (int k = 0; k < (kDx ? S::kDimX : 1); ++k) acc[k] = T(0);
        T w_next[PF ? S::kNumPaths : 1], dz_next[PF ? S::kDimO : 1];
        auto prefetch = [&](int t) {
          if constexpr (PF)
            if (t < count && src_x[t] >= 0 && active) {
              for (int n = 0; n < S::kNumPaths; ++n)
                w_next[n] = load_edge<kHints>(w + int64_t(edge[t]) * c.num_w + int64_t(n) * mul + u);
              gather_node<kHints, O>(dz + int64_t(src_z[t]) * c.dim_z, mul, u, dz_next);
            }
        };
        if constexpr (PF) prefetch(0);
        for (int t = 0; t < count; ++t) {
          const int64_t e = edge[t];
          const int32_t rx = src_x[t];
          T w_cur[PF || RING ? S::kNumPaths : 1], dz_cur[PF || RING ? S::kDimO : 1];
          if constexpr (PF) {
            for (int n = 0; n < S::kNumPaths; ++n) w_cur[n] = w_next[n];
            for (int k = 0; k < S::kDimO; ++k) dz_cur[k] = dz_next[k];
            prefetch(t + 1);
          }
          if constexpr (RING)
            if (rx >= 0)
              ring_consume(ring, &at, [&](int s) {
                if (!active) return;
                if constexpr (kReadW) {
                  const T* w_row = reinterpret_cast<const T*>(ring.row(s, 0));
                  for (int n = 0; n < S::kNumPaths; ++n) w_cur[n] = w_row[n * mul + u];
                }
                if (kReadX && rx != x_row) {
                  core::shape_gather<X>(reinterpret_cast<const T*>(ring.row(s, 1)), mul, u, xu);
                  x_row = rx;
                }
                core::shape_gather<O>(reinterpret_cast<const T*>(ring.row(s, 2)), mul, u, dz_cur);
              });
          T dyv[kGradsMaxDimY];
          for (int j = 0; j < kGradsMaxDimY; ++j) dyv[j] = T(0);
          if (rx >= 0 && active) {
            T yv[S::kDimY];
            for (int j = 0; j < S::kDimY; ++j) yv[j] = kReadY ? y_rows[kReadY ? t : 0][j] : T(0);
            const T* wr = w + e * c.num_w;
            T* dwr = dw + e * c.num_w;
            T dzu[S::kDimO], dxu[S::kDimX];
            if constexpr (kReadX && !RING)
              if (rx != x_row) {
                gather_node<kHints, X>(x + int64_t(rx) * c.dim_x, mul, u, xu);
                x_row = rx;
              }
            if constexpr (PF || RING) {
              for (int k = 0; k < S::kDimO; ++k) dzu[k] = dz_cur[k];
            } else {
              gather_node<kHints, O>(dz + int64_t(src_z[t]) * c.dim_z, mul, u, dzu);
            }
            core::uvu_shape_channel_grads<X, Y, O, GRADS>(
                xu, yv, dzu, pw,
                [&](int n) {
                  if constexpr (PF || RING) return w_cur[n];
                  else return load_edge<kHints>(wr + int64_t(n) * mul + u);
                },
                dxu, dyv,
                [&](int n, T v) { store_edge<kHints>(dwr + int64_t(n) * mul + u, v); });
            if constexpr (kDx) {
              for (int k = 0; k < S::kDimX; ++k) acc[k] += dxu[k];
              if (!DET && (t + 1 == count || src_x[t + 1] != rx)) {  // sender rx's run ends: one add per component
                T* dx_row = dx + int64_t(rx) * c.dim_x;
                core::shape_for_each<X>(mul, u, [&](int64_t at, int k) { atomicAdd(dx_row + at, acc[k]); });
                for (int k = 0; k < S::kDimX; ++k) acc[k] = T(0);
              }
            }
          } else if (kDw && rx < 0 && u0 == 0 && e >= 0) {  // a dropped edge: zero gradients (dy: zero partials)
            for (int64_t k = threadIdx.x; k < c.num_w; k += kThreads) dw[e * c.num_w + k] = T(0);
          }
          if constexpr (kDy) {  // summed over the channel rounds by the same thread
            const T sum = warp_sum_pairs(dyv);
            if (lane % 2 == 0 && lane / 2 < S::kDimY) {
              T& slot = dy_warps[t][warp][lane / 2];
              slot = u0 == 0 ? sum : slot + sum;
            }
          }
        }
        if (DET && dx_dst && active)  // deterministic: the piece's row, stored by its owner (later chunks add)
          core::shape_for_each<X>(mul, u,
                                  [&](int64_t at, int k) { dx_dst[at] = k0 > begin ? dx_dst[at] + acc[k] : acc[k]; });
      }
      __syncthreads();
      if constexpr (kDy) {
        for (int i = threadIdx.x; i < count * S::kDimY; i += blockDim.x) {
          const int t = i / S::kDimY, j = i % S::kDimY;
          T total = T(0);
          for (int k = 0; k < kWarps; ++k) total += dy_warps[t][k][j];
          if (edge[t] >= 0) dy[int64_t(edge[t]) * c.dim_y + j] = total;
        }
        __syncthreads();  // the chunk's staging is reused
      }
      if (!DET || k0 + kSize >= end) break;  // (an atomic unit is one chunk)
    }
  }
}

// The second-order pass of the force-training step (tensor_product.py, tp_grads2_p), atomic mode: per edge
// e with sender s and receiver r, given the cotangents of the forces' gradients, c_dy[e] (y-like: one row of
// SH values) and c_dw[e] (weight-like),
//     c_x[s] += T_x(c_dy, w, z) + T_x(Y, c_dw, z),   c_w[e] = T_w(x, c_dy, z),
//     c_z[r] += T_z(x, c_dy, w) + T_z(x, Y, c_dw)
// for those whose pointer is non-null (Y: y's rows, or the SH of edge vectors). Five passes over the edges
// of the term-by-term transposes in one: each edge's w, c_dw, x and z are read once for all of them. Edges
// in their order, `chunk` at a time (balanced_chunk); a thread per channel (strided accesses, as the
// gradient kernel above): x and z kept per run of one sender / receiver, c_z summed over each run of one
// receiver in registers and added once per run, c_x added per edge (senders are rarely sorted: H100 atomics
// to random 2 kB rows cost ~0.1 ms per 150k edges, tools/atomics_bench.cu). Dropped edges (an index out of
// range) contribute nothing and get zero c_w rows. c_w may be c_dw's buffer (Python aliases them): each
// element is read, then written, by the same thread (no __restrict__ on those two).
template <uint32_t X, uint32_t Y, uint32_t O, typename T, bool SH>
__global__ void __launch_bounds__(kThreads, kShapedGradsMinBlocks<T>)
    tp_uvu_shaped_edge_grads2_kernel(TpCall c, int chunk, const TpPath* __restrict__ paths_g,
                                     const T* __restrict__ pw_g, const T* __restrict__ x, const T* __restrict__ y,
                                     const T* __restrict__ w, const T* __restrict__ z, const T* __restrict__ c_dy,
                                     const T* c_dw, T* __restrict__ c_x, T* c_w, T* __restrict__ c_z) {
  using S = core::UvuShape<X, Y, O>;
  constexpr int kSize = kMaxEdgeChunk, N = S::kNumPaths, kHints = kKeepNodeRows | kStreamLoads | kStreamStores;
  __shared__ T pw[N];
  __shared__ int32_t edge[kSize], src_x[kSize], src_z[kSize];  // src_x < 0: the edge is dropped
  __shared__ T y_rows[kSize][S::kDimY], cdy_rows[kSize][S::kDimY];
  const int32_t mul = static_cast<int32_t>(c.dim_x / S::kDimX);
  load_shape_path_weights<N>(paths_g, pw_g, c.num_paths, mul, pw);
  const int64_t units = (c.rows + chunk - 1) / chunk;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t k0 = unit * chunk;
    const int count = static_cast<int>(min(int64_t(chunk), c.rows - k0));
    if (threadIdx.x < count) {
      const int64_t e = k0 + threadIdx.x;
      int64_t rx = -1, rz = -1;
      const bool ok = c.edge_rows(e, &rx, &rz);
      edge[threadIdx.x] = static_cast<int32_t>(e);
      src_x[threadIdx.x] = ok ? static_cast<int32_t>(rx) : -1;
      src_z[threadIdx.x] = ok ? static_cast<int32_t>(rz) : -1;
      if (ok) {
        if constexpr (SH) core::tp_sh_row(c, y + e * 3, y_rows[threadIdx.x]);
        else
          for (int j = 0; j < S::kDimY; ++j) y_rows[threadIdx.x][j] = y[e * c.dim_y + j];
        for (int j = 0; j < S::kDimY; ++j) cdy_rows[threadIdx.x][j] = c_dy[e * S::kDimY + j];
      }
    }
    __syncthreads();
    for (int32_t u0 = 0; u0 < mul; u0 += blockDim.x) {  // block-uniform: thread u0 + threadIdx.x's channel
      const int32_t u = u0 + threadIdx.x;
      const bool active = u < mul;
      T xu[S::kDimX], zu[S::kDimO], zacc[S::kDimO] = {};
      int32_t x_row = -1, z_row = -1, acc_row = -1;  // the rows xu and zu hold, and the run zacc sums
      auto flush = [&]() {
        if (c_z && acc_row >= 0)
          core::shape_for_each<O>(mul, u, [&](int64_t at, int k) { atomicAdd(c_z + int64_t(acc_row) * c.dim_z + at, zacc[k]); });
      };
      for (int t = 0; t < count; ++t) {
        const int64_t e = edge[t];
        const int32_t rx = src_x[t], rz = src_z[t];
        if (rx >= 0 && active) {
          if (rx != x_row) {
            gather_node<kHints, X>(x + int64_t(rx) * c.dim_x, mul, u, xu);
            x_row = rx;
          }
          if (rz != z_row) {
            gather_node<kHints, O>(z + int64_t(rz) * c.dim_z, mul, u, zu);
            z_row = rz;
          }
          T wv[N], cw[N];
          for (int n = 0; n < N; ++n) {
            wv[n] = load_edge<kHints>(w + e * c.num_w + int64_t(n) * mul + u);
            cw[n] = load_edge<kHints>(c_dw + e * c.num_w + int64_t(n) * mul + u);
          }
          if (c_z) {
            if (rz != acc_row) {  // a new receiver's run: the last one's sum goes out
              flush();
              for (int k = 0; k < S::kDimO; ++k) zacc[k] = T(0);
              acc_row = rz;
            }
            T scale_w[N], scale_cw[N];
            for (int n = 0; n < N; ++n) {
              scale_w[n] = pw[n] * wv[n];
              scale_cw[n] = pw[n] * cw[n];
            }
            core::uvu_shape_channel_add<X, Y, O>(xu, cdy_rows[t], scale_w, zacc);
            core::uvu_shape_channel_add<X, Y, O>(xu, y_rows[t], scale_cw, zacc);
          }
          if (c_x || c_w) {
            T dx_dy[S::kDimX], dx_dw[S::kDimX];
            T* cwr = c_w ? c_w + e * c.num_w : nullptr;
            core::uvu_shape_channel_grads<X, Y, O, core::kGradX | core::kGradW>(
                xu, cdy_rows[t], zu, pw, [&](int n) { return wv[n]; }, dx_dy, static_cast<T*>(nullptr),
                [&](int n, T v) {
                  if (cwr) store_edge<kHints>(cwr + int64_t(n) * mul + u, v);
                });
            if (c_x) {
              core::uvu_shape_channel_grads<X, Y, O, core::kGradX>(
                  xu, y_rows[t], zu, pw, [&](int n) { return cw[n]; }, dx_dw, static_cast<T*>(nullptr),
                  [](int, T) {});
              T* row = c_x + int64_t(rx) * c.dim_x;
              core::shape_for_each<X>(mul, u, [&](int64_t at, int k) { atomicAdd(row + at, dx_dy[k] + dx_dw[k]); });
            }
          }
        } else if (c_w && rx < 0 && u0 == 0) {  // a dropped edge: zero weight cotangents
          for (int64_t k = threadIdx.x; k < c.num_w; k += blockDim.x) c_w[e * c.num_w + k] = T(0);
        }
      }
      flush();
    }
    __syncthreads();  // the chunk's staging is reused
  }
}

// Any problem: thread per output element of the node's row (core::tp_path_element).
template <TpSlot SLOT, typename T>
__global__ void __launch_bounds__(kThreads) tp_segment_kernel(TpCall c, const TpPath* __restrict__ paths_g,
                                                              const int32_t* __restrict__ cg_ijk,
                                                              const T* __restrict__ cg_c, const T* __restrict__ pw,
                                                              const T* __restrict__ x, const T* __restrict__ y,
                                                              const T* __restrict__ w, const T* __restrict__ z,
                                                              T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  unsigned char* chunk_raw = smem_raw + align16(c.num_paths * sizeof(TpPath));
  const SegmentChunk chunk{reinterpret_cast<int32_t*>(chunk_raw), reinterpret_cast<int32_t*>(chunk_raw) + kChunk};
  T* y_rows = reinterpret_cast<T*>(chunk_raw + align16(2 * kChunk * sizeof(int32_t)));
  stage_tables(c, paths_g, static_cast<const T*>(nullptr), paths, static_cast<T*>(nullptr));
  __syncthreads();

  const int64_t width = c.out_width();
  for (int64_t n = blockIdx.x; n < c.nodes; n += gridDim.x) {
    int64_t begin, end;
    segment_range(c, n, &begin, &end);
    T* orow = out + n * width;
    for (int64_t k0 = begin;; k0 += kChunk) {
      const int count = static_cast<int>(min(int64_t(kChunk), end - k0));
      stage_chunk(c, n, k0, count, y, chunk, y_rows);
      for (int64_t idx = threadIdx.x; idx < width; idx += blockDim.x) {
        T acc = T(0);
        for (int t = 0; t < count; ++t) {
          if (chunk.edge[t] < 0) continue;
          const EdgeRows<SLOT, T> r(c, chunk, t, y_rows, x, y, w, z);
          for (int32_t pi = 0; pi < c.num_paths; ++pi) {
            const TpPath& p = paths[pi];
            const int64_t rel = idx - core::tp_target_offset<SLOT>(p);
            const int32_t dim = core::tp_target_dim<SLOT>(p);
            if (rel < 0 || rel >= int64_t(core::tp_target_channels<SLOT>(p)) * dim) continue;
            acc += core::tp_path_element<SLOT>(p, static_cast<int32_t>(rel / dim), static_cast<int32_t>(rel % dim),
                                               pw[pi], c.with_unweighted, r.x, r.y, r.w, r.z, cg_ijk, cg_c);
          }
        }
        orow[idx] = k0 > begin ? orow[idx] + acc : acc;
      }
      __syncthreads();
      if (k0 + kChunk >= end) break;
    }
  }
}

// A device attribute of the current device, queried once per device (launches are a hot path).
template <cudaDeviceAttr ATTR>
int device_attribute(int fallback) {
  static std::atomic<int> cached[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return fallback;
  int n = cached[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, ATTR, device) != cudaSuccess || n <= 0) n = fallback;
    cached[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

int multiprocessors() { return device_attribute<cudaDevAttrMultiProcessorCount>(132); }

// Blocks of `kernel` resident on the whole GPU with `threads` per block and `smem` bytes of dynamic shared
// memory; the per-SM count is queried once per (kernel, threads, smem) (launches are a hot path).
template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t smem) {
  struct Entry {
    const void* kernel;
    int threads;
    size_t smem;
    int per_sm;
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;
  const void* key = reinterpret_cast<const void*>(kernel);
  std::lock_guard<std::mutex> lock(mutex);
  for (const Entry& e : cache)
    if (e.kernel == key && e.threads == threads && e.smem == smem) return int64_t(e.per_sm) * multiprocessors();
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != cudaSuccess || per_sm <= 0)
    per_sm = 1;
  cache.push_back({key, threads, smem, per_sm});
  return int64_t(per_sm) * multiprocessors();
}

// Largest dynamic shared memory a block may opt in to (48 KiB without opting in).
size_t smem_optin_limit() {
  return static_cast<size_t>(device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(48 * 1024));
}

// Lets `kernel` launch with `smem` bytes of dynamic shared memory. Past 48 KiB in all, its static shared
// memory counted (the launchers checked only the dynamic bytes before: a ring of 44 KiB beside 5 KiB of
// static arrays failed to launch), a kernel must opt in: once per (kernel, device), to the device's limit
// (the launch's own bytes decide occupancy, not this bound), and before resident_blocks asks for the
// kernel's occupancy at those bytes.
template <typename Kernel>
cudaError_t allow_dynamic_smem(Kernel kernel, size_t smem) {
  if (smem == 0) return cudaSuccess;
  struct Entry {
    const void* kernel;
    int device;
    size_t static_bytes;
    bool opted_in;
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const void* key = reinterpret_cast<const void*>(kernel);
  std::lock_guard<std::mutex> lock(mutex);
  Entry* entry = nullptr;
  for (Entry& e : cache)
    if (e.kernel == key && e.device == device) entry = &e;
  if (entry == nullptr) {
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, kernel);
    if (err != cudaSuccess) return err;
    cache.push_back({key, device, attr.sharedSizeBytes, false});
    entry = &cache.back();
  }
  if (entry->opted_in || entry->static_bytes + smem <= 48 * 1024) return cudaSuccess;
  const size_t limit = smem_optin_limit();
  if (entry->static_bytes + smem > limit) return cudaErrorInvalidValue;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(limit - entry->static_bytes));
  entry->opted_in = err == cudaSuccess;
  return err;
}

// Returns false when the problem's scratch does not fit in shared memory (the caller then runs tp_kernel).
template <TpSlot SLOT, typename T>
bool launch_uvu(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* const ops[4], T* out,
                cudaError_t* err) {
  const size_t smem = uvu_smem_bytes(c, kThreads, sizeof(T));
  if (smem > smem_optin_limit()) return false;
  // (The y gradient never has computed y rows: no SH instantiation for it.)
  constexpr bool kMaySh = SLOT != TpSlot::kY;
  const bool sh = kMaySh && c.sh_lmax >= 0;
  auto kernel = c.nodes >= 0 ? (sh ? tp_uvu_kernel<SLOT, T, true, kMaySh> : tp_uvu_kernel<SLOT, T, true, false>)
                             : (sh ? tp_uvu_kernel<SLOT, T, false, kMaySh> : tp_uvu_kernel<SLOT, T, false, false>);
  *err = allow_dynamic_smem(kernel, smem);
  if (*err != cudaSuccess) return true;
  // Elements no path writes (and the cross-block sum of shared-weight gradients) start from zero.
  // So do scatter-sums over edges.
  if (c.reduces_rows() || c.scatters() || (c.zero_fill >> static_cast<int>(SLOT)) & 1) {
    *err = cudaMemsetAsync(out, 0, c.out_rows() * c.out_width() * sizeof(T), stream);
    if (*err != cudaSuccess) return true;
  }
  const int64_t max_blocks = c.reduces_rows() ? 4 * multiprocessors() : (int64_t(1) << 20);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(c.rows, max_blocks));
  kernel<<<blocks, kThreads, smem, stream>>>(c, paths, pw, ops[0], ops[1], ops[2], ops[3], out);
  *err = cudaGetLastError();
  return true;
}

// The multiplicity of a call of compiled shape S, or 0 if the call's widths do not fit it.
template <typename S>
int32_t shaped_mul(const TpCall& c) {
  const int64_t mul = c.dim_x / core::UvuShape<S::X, S::Y, S::O>::kDimX;
  if (mul > (int64_t(1) << 30) || !core::shape_fits<S::X, S::Y, S::O>(c, static_cast<int32_t>(mul))) return 0;
  return static_cast<int32_t>(mul);
}

// Slot z of a plain product whose shape was compiled in (core::uvu_shape_dispatch); false otherwise.
// The table is in device memory: the call's widths are checked here, the table's weight offsets by
// Python (tensor_product.py, _uvu_shape) and again by the kernel's first thread.
template <typename T>
bool launch_uvu_shaped(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* const ops[4],
                       T* out, cudaError_t* err) {
  if (c.nodes >= 0 || c.sh_lmax >= 0 || !ops[0] || !ops[1] || !ops[2]) return false;
  return core::uvu_shape_dispatch(c.uvu_shape, [&](auto shape) {
    using S = decltype(shape);
    if (shaped_mul<S>(c) == 0) return false;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(c.rows, int64_t(1) << 20));
    tp_uvu_shaped_kernel<S::X, S::Y, S::O, T><<<blocks, kThreads, 0, stream>>>(c, paths, pw, ops[0], ops[1], ops[2], out);
    *err = cudaGetLastError();
    return true;
  });
}

// The fused backward of a plain product of a compiled shape (tp_uvu_shaped_grads_kernel): dy, dw and,
// if dx is non-null, dx; false when the call is not one (the caller runs the separate kernels).
template <typename T>
bool launch_uvu_shaped_grads(cudaStream_t stream, const TpCall& cy, const TpPath* paths, const T* pw, const T* x,
                             const T* y, const T* w, const T* z, T* dx, T* dy, T* dw, cudaError_t* err) {
  if (cy.nodes >= 0 || cy.sh_lmax >= 0 || cy.shared_w || cy.kernel != core::TpKernel::kUvu) return false;
  return core::uvu_shape_dispatch(cy.uvu_shape, [&](auto shape) {
    using S = decltype(shape);
    if (shaped_mul<S>(cy) == 0) return false;
    *err = cudaSuccess;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(cy.rows, int64_t(1) << 20));
    if (blocks == 0) return true;
    auto kernel = dx ? tp_uvu_shaped_grads_kernel<S::X, S::Y, S::O, true, T>
                     : tp_uvu_shaped_grads_kernel<S::X, S::Y, S::O, false, T>;
    kernel<<<blocks, kThreads, 0, stream>>>(cy, paths, pw, x, y, w, z, dx, dy, dw);
    *err = cudaGetLastError();
    return true;
  });
}

// The forward's EdgeRing depth for call `c` of multiplicity `mul`, or 0 for the lanes' own loads: the ring
// needs sm_90 (bulk copies), fp32 (fp64 rows would halve the blocks per SM), per-edge weights, one consumer
// warp per 32 channels, and rows whose bytes (and start addresses) are multiples of 16.
template <typename T>
int edge_ring_depth(const TpCall& c, int32_t mul, const T* const (&rows)[kRingRows]) {
  constexpr int depth = kEdgeRingDepth;
  const int64_t widths[kRingRows] = {c.num_w, c.dim_x, c.dim_z};
  bool fits = sizeof(T) == 4 && !c.shared_w && mul <= kThreads &&
              device_attribute<cudaDevAttrComputeCapabilityMajor>(0) >= 9;
  RingRows bytes;
  for (int i = 0; i < kRingRows; ++i) {
    fits = fits && (!rows[i] || ((widths[i] * sizeof(T)) % 16 == 0 && reinterpret_cast<uintptr_t>(rows[i]) % 16 == 0));
    bytes.bytes[i] = rows[i] ? static_cast<uint32_t>(widths[i] * sizeof(T)) : 0;
  }
  return fits && ring_bytes(depth, bytes) <= smem_optin_limit() / 2 ? depth : 0;
}

// Slot z of a graph call of a compiled shape (tp_uvu_shaped_edge_kernel), both modes; the caller zeroed
// the output where the mode needs it and adds the deterministic mode's pieces after. False when the call
// is not one (the caller runs tp_uvu_edge_kernel).
template <typename T>
bool launch_uvu_shaped_edges(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw,
                             const T* const ops[4], T* out, cudaError_t* err) {
  if (c.uvu_shape == 0 || !ops[0] || !ops[1] || !ops[2] || c.sh_lmax > core::kCgMaxL) return false;
  return core::uvu_shape_dispatch(c.uvu_shape, [&](auto shape) {
    using S = decltype(shape);
    if (shaped_mul<S>(c) == 0) return false;
    if (c.sh_lmax >= 0 && core::sh_dim(c.sh_lmax) != c.dim_y) return false;
    const bool sh = c.sh_lmax >= 0;
    const int depth = edge_ring_depth<T>(c, shaped_mul<S>(c), {ops[2], ops[0], nullptr});
    const bool ring = depth > 0;
    auto kernel = sh ? tp_uvu_shaped_edge_kernel<S::X, S::Y, S::O, T, true, false>
                     : tp_uvu_shaped_edge_kernel<S::X, S::Y, S::O, T, false, false>;
    if constexpr (sizeof(T) == 4)  // (edge_ring_depth is 0 otherwise: no ring instantiations)
      if (ring)
        kernel = sh ? tp_uvu_shaped_edge_kernel<S::X, S::Y, S::O, T, true, true>
                    : tp_uvu_shaped_edge_kernel<S::X, S::Y, S::O, T, false, true>;
    const int threads = ring ? kRingThreads : kThreads;
    const size_t smem = ring ? ring_bytes(depth, edge_ring_rows<T>(c.num_w, c.dim_x, 0)) : 0;
    *err = allow_dynamic_smem(kernel, smem);
    if (*err != cudaSuccess) return true;
    const bool det = c.segmented();
    const int chunk = det ? kMaxEdgeChunk : balanced_chunk(c.rows, resident_blocks(kernel, threads, smem));
    const int64_t units = det ? node_piece_units(c) : (c.rows + chunk - 1) / chunk;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(units, int64_t(1) << 20));
    *err = cudaSuccess;
    if (blocks == 0) return true;
    kernel<<<blocks, threads, smem, stream>>>(c, chunk, depth, paths, pw, ops[0], ops[1], ops[2], out);
    *err = cudaGetLastError();
    return true;
  });
}

// tp_uvu_shaped_edge_grads_kernel<..., GRADS, T, SH, DET> of shape S: the masks launched (the whole backward
// with and without dx, and each gradient alone: the sets tensor_product.py's _fused_grads asks for; SH only
// where the mask reads y; DET only where it has dx); null for any other mask.
template <typename S, typename T>
using EdgeGradsKernel = void (*)(TpCall, int, int, const TpPath*, const T*, const T*, const T*, const T*, const T*, T*,
                                 T*, T*);
template <typename S, typename T, int GRADS, bool DET, bool RING>
EdgeGradsKernel<S, T> edge_grads_kernel_of(bool sh) {
  if constexpr (core::grads_read_y(GRADS))
    if (sh) return tp_uvu_shaped_edge_grads_kernel<S::X, S::Y, S::O, GRADS, T, true, DET, RING>;
  // (y unread: how it is given is moot)
  return tp_uvu_shaped_edge_grads_kernel<S::X, S::Y, S::O, GRADS, T, false, DET, RING>;
}
template <typename S, typename T, int GRADS, bool RING>
EdgeGradsKernel<S, T> edge_grads_kernel_for(bool sh, bool det) {
  if constexpr ((GRADS & core::kGradX) != 0)
    if (det) return edge_grads_kernel_of<S, T, GRADS, true, RING>(sh);
  return edge_grads_kernel_of<S, T, GRADS, false, RING>(sh);
}
template <typename S, typename T, int GRADS>
EdgeGradsKernel<S, T> edge_grads_kernel_ring(bool sh, bool det, bool ring) {
  if constexpr (sizeof(T) == 4)  // (edge_ring_depth is 0 otherwise: no ring instantiations)
    if (ring) return edge_grads_kernel_for<S, T, GRADS, true>(sh, det);
  return edge_grads_kernel_for<S, T, GRADS, false>(sh, det);
}
template <typename S, typename T>
EdgeGradsKernel<S, T> edge_grads_kernel(int grads, bool sh, bool det, bool ring) {
  using core::kGradX, core::kGradY, core::kGradW;
  switch (grads) {
    case kGradX | kGradY | kGradW: return edge_grads_kernel_ring<S, T, kGradX | kGradY | kGradW>(sh, det, ring);
    case kGradY | kGradW: return edge_grads_kernel_ring<S, T, kGradY | kGradW>(sh, det, ring);
    case kGradX: return edge_grads_kernel_ring<S, T, kGradX>(sh, det, ring);
    case kGradY: return edge_grads_kernel_ring<S, T, kGradY>(sh, det, ring);
    case kGradW: return edge_grads_kernel_ring<S, T, kGradW>(sh, det, ring);
    default: return nullptr;
  }
}

// Gradients of a graph call of a compiled shape (tp_uvu_shaped_edge_grads_kernel): those whose pointer
// is non-null among dx [nodes, dim_x] (atomic adds, or with dx_lists.deterministic stored per sender),
// dy and dw; the operands they do not read may be null. `c` is a call with the y operand's view of y
// (edge vectors when c.sh_lmax >= 0). False when the call is not one (the caller runs the other kernels).
template <typename T>
bool launch_uvu_shaped_edge_grads(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* x,
                                  const T* y, const T* w, const T* z, T* dx, T* dy, T* dw, cudaError_t* err,
                                  const core::DxLists& dx_lists = {}) {
  if (c.nodes < 0 || c.shared_w || c.kernel != core::TpKernel::kUvu || c.sh_lmax > core::kCgMaxL) return false;
  const int grads = (dx ? core::kGradX : 0) | (dy ? core::kGradY : 0) | (dw ? core::kGradW : 0);
  const bool det = dx && dx_lists.deterministic && c.seg_offsets && c.seg_edges;
  return core::uvu_shape_dispatch(c.uvu_shape, [&](auto shape) {
    using S = decltype(shape);
    if (shaped_mul<S>(c) == 0) return false;
    const bool sh = c.sh_lmax >= 0;
    if (sh && core::sh_dim(c.sh_lmax) != c.dim_y) return false;
    const bool read_w = dx || dy, read_x = dy || dw;  // (core::grads_read_w / grads_read_x)
    const int depth = edge_ring_depth<T>(c, shaped_mul<S>(c), {read_w ? w : nullptr, read_x ? x : nullptr, z});
    const EdgeGradsKernel<S, T> kernel = edge_grads_kernel<S, T>(grads, sh, det, depth > 0);
    if (kernel == nullptr) return false;
    const int threads = depth > 0 ? kRingThreads : kThreads;
    const size_t smem =
        depth > 0 ? ring_bytes(depth, edge_ring_rows<T>(read_w ? c.num_w : 0, read_x ? c.dim_x : 0, c.dim_z)) : 0;
    *err = allow_dynamic_smem(kernel, smem);
    if (*err != cudaSuccess) return true;
    // Atomic adds need a zeroed dx; the deterministic units store every sender's row (none without edges).
    *err = dx && (!det || c.rows == 0) ? cudaMemsetAsync(dx, 0, c.nodes * c.dim_x * sizeof(T), stream) : cudaSuccess;
    if (*err != cudaSuccess || c.rows == 0) return true;
    TpCall call = c;  // the sender lists' pieces (deterministic dx)
    call.seg_pieces = det ? dx_lists.seg_pieces : nullptr;
    call.seg_scratch = det ? dx_lists.seg_scratch : nullptr;
    call.seg_scratch_rows = det && dx_lists.seg_pieces ? dx_lists.seg_scratch_rows : 0;
    const int chunk = det ? kMaxEdgeChunk : balanced_chunk(c.rows, resident_blocks(kernel, threads, smem));
    const int64_t units =
        det ? node_piece_units(call) + edge_grads_tail_units(call, grads) : (c.rows + chunk - 1) / chunk;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(units, int64_t(1) << 20));
    kernel<<<blocks, threads, smem, stream>>>(call, chunk, depth, paths, pw, x, y, w, z, dx, dy, dw);
    *err = cudaGetLastError();
    if (*err == cudaSuccess && det && call.seg_scratch_rows > 0) {  // split lists: the later pieces' rows
      TpCall pieces = call;
      pieces.slot = TpSlot::kX;  // (rows of dx's width)
      *err = launch_add_segment_pieces<T>(stream, pieces, dx);
    }
    return true;
  });
}

// tp_grads2_p's pass (tp_uvu_shaped_edge_grads2_kernel) for a slot-z graph call `c` of a compiled shape
// in atomic mode: zeroes the scattered results, launches. False when `c` is not one.
template <typename T>
bool launch_uvu_shaped_edge_grads2(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* x,
                                   const T* y, const T* w, const T* z, const T* c_dy, const T* c_dw, T* c_x, T* c_w,
                                   T* c_z, cudaError_t* err) {
  if (c.nodes < 0 || c.shared_w || c.kernel != core::TpKernel::kUvu || c.sh_lmax > core::kCgMaxL) return false;
  return core::uvu_shape_dispatch(c.uvu_shape, [&](auto shape) {
    using S = decltype(shape);
    if (shaped_mul<S>(c) == 0) return false;
    const bool sh = c.sh_lmax >= 0;
    if (sh && core::sh_dim(c.sh_lmax) != c.dim_y) return false;
    auto kernel = sh ? tp_uvu_shaped_edge_grads2_kernel<S::X, S::Y, S::O, T, true>
                     : tp_uvu_shaped_edge_grads2_kernel<S::X, S::Y, S::O, T, false>;
    *err = cudaSuccess;
    if (c_x) *err = cudaMemsetAsync(c_x, 0, c.nodes * c.dim_x * sizeof(T), stream);
    if (*err == cudaSuccess && c_z) *err = cudaMemsetAsync(c_z, 0, c.nodes * c.dim_z * sizeof(T), stream);
    if (*err != cudaSuccess || c.rows == 0) return true;
    const int chunk = balanced_chunk(c.rows, resident_blocks(kernel, kThreads, 0));
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((c.rows + chunk - 1) / chunk, int64_t(1) << 20));
    kernel<<<blocks, kThreads, 0, stream>>>(c, chunk, paths, pw, x, y, w, z, c_dy, c_dw, c_x, c_w, c_z);
    *err = cudaGetLastError();
    return true;
  });
}

// Slot y or w of a graph call of a compiled shape on its own: the edge-gradient kernel with that one
// gradient. (Slot x calls come with sender lists in both modes; Python sends the atomic mode's x
// gradient of these shapes to jbm_tp_grads instead: tensor_product.py, _fused_grads.) False when the
// call is not one.
template <TpSlot SLOT, typename T>
bool launch_uvu_shaped_edge_slot(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw,
                                 const T* const ops[4], T* out, cudaError_t* err) {
  static_assert(SLOT == TpSlot::kY || SLOT == TpSlot::kW, "per-edge outputs only");
  return launch_uvu_shaped_edge_grads<T>(stream, c, paths, pw, ops[0], ops[1], ops[2], ops[3], nullptr,
                                         SLOT == TpSlot::kY ? out : nullptr, SLOT == TpSlot::kW ? out : nullptr, err);
}

// Slots z and x (both modes) and w (per-edge weights) of a graph call on the channelwise kernel. Returns
// false when not even one edge's staging fits the shared-memory budget (the caller runs another kernel).
template <TpSlot SLOT, typename T>
bool launch_uvu_edges(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* const ops[4],
                      T* out, cudaError_t* err) {
  const int size = edge_chunk_size(c, sizeof(T));
  if (size == 0) return false;
  const bool det = c.segmented();
  // Atomic adds need a zeroed output; the other modes store only the blocks that paths write.
  if ((!det && c.scatters()) || (c.zero_fill >> static_cast<int>(SLOT)) & 1) {
    *err = cudaMemsetAsync(out, 0, c.out_rows() * c.out_width() * sizeof(T), stream);
    if (*err != cudaSuccess) return true;
  }
  // Split node lists: their later pieces' scratch rows, added to the nodes' rows after the kernel.
  const bool pieces = det && c.seg_pieces && c.seg_scratch_rows > 0;
  if (pieces && (c.zero_fill >> static_cast<int>(SLOT)) & 1) {  // elements no path writes stay zero
    *err = cudaMemsetAsync(c.seg_scratch, 0, c.seg_scratch_rows * c.out_width() * sizeof(T), stream);
    if (*err != cudaSuccess) return true;
  }
  *err = cudaSuccess;
  bool shaped = false;
  if constexpr (SLOT == TpSlot::kZ) shaped = launch_uvu_shaped_edges<T>(stream, c, paths, pw, ops, out, err);
  if (!shaped) {
    const int64_t units = det ? node_piece_units(c) : (c.rows + size - 1) / size;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(units, int64_t(1) << 20));
    if (blocks == 0) return true;
    auto kernel = c.sh_lmax >= 0 ? tp_uvu_edge_kernel<SLOT, T, true> : tp_uvu_edge_kernel<SLOT, T, false>;
    kernel<<<blocks, kThreads, edge_chunk_bytes(c, size, sizeof(T)), stream>>>(c, size, paths, pw, ops[0], ops[1],
                                                                              ops[2], ops[3], out);
    *err = cudaGetLastError();
  }
  if (*err == cudaSuccess && pieces) {
    *err = launch_add_segment_pieces<T>(stream, c, out);
  }
  return true;
}

// Slot y of a channelwise call on edge chunks (tp_uvu_edge_y_kernel), with `dw` non-null fused with the
// per-row weight gradient (y then holds the operand y, or edge vectors when c.sh_lmax >= 0). Returns
// false when the kernel does not apply (the caller runs others).
template <typename T>
bool launch_uvu_edges_y(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* x, const T* y,
                        const T* w, const T* z, T* out, T* dw, cudaError_t* err) {
  const bool with_w = true;
  if (dw == nullptr) return false;
  // Entry ids are int32 in the staging (graph calls have int32 edge counts; plain ones are capped here).
  if (c.kernel != core::TpKernel::kUvu || c.rows > (int64_t(1) << 31) - 2 * kMaxEdgeChunk) return false;
  if (with_w && c.shared_w) return false;
  const int size = edge_chunk_size(c, sizeof(T), with_w);
  if (size == 0) return false;
  *err = cudaSuccess;
  if (with_w && (c.zero_fill >> static_cast<int>(TpSlot::kW)) & 1) {  // weights no path reaches
    *err = cudaMemsetAsync(dw, 0, c.rows * c.num_w * sizeof(T), stream);
    if (*err != cudaSuccess) return true;
  }
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((c.rows + size - 1) / size, int64_t(1) << 20));
  if (blocks == 0) return true;
  // (W_GRAD = false, the y gradient alone, is not launched yet: see launch_tp_grads.)
  auto kernel = c.sh_lmax >= 0 ? tp_uvu_edge_y_kernel<T, true, true> : tp_uvu_edge_y_kernel<T, true, false>;
  kernel<<<blocks, kThreads, edge_chunk_bytes(c, size, sizeof(T), with_w), stream>>>(c, size, paths, pw, x, y, w, z,
                                                                                     out, dw);
  *err = cudaGetLastError();
  return true;
}

// Deterministic scatter of any problem (tp_segment_kernel).
template <TpSlot SLOT, typename T>
cudaError_t launch_segmented(cudaStream_t stream, const TpCall& c, const TpPath* paths, const int32_t* cg_ijk,
                             const T* cg_c, const T* pw, const T* const ops[4], T* out) {
  const size_t smem = segment_smem_bytes<T>(c, align16(c.num_paths * sizeof(TpPath)));
  if (smem > smem_optin_limit()) return cudaErrorInvalidConfiguration;  // tables of thousands of paths
  cudaError_t err;
  err = allow_dynamic_smem(tp_segment_kernel<SLOT, T>, smem);
  if (err != cudaSuccess) return err;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(c.nodes, int64_t(1) << 20));
  if (blocks == 0) return cudaSuccess;
  tp_segment_kernel<SLOT, T><<<blocks, kThreads, smem, stream>>>(c, paths, cg_ijk, cg_c, pw, ops[0], ops[1], ops[2],
                                                                  ops[3], out);
  return cudaGetLastError();
}

template <TpSlot SLOT, typename T>
cudaError_t launch(cudaStream_t stream, const TpCall& c, const TpPath* paths, const int32_t* cg_ijk,
                   const T* cg_c, const T* pw, const T* const ops[4], T* out) {
  const int64_t width = c.out_width();
  const int64_t out_elems = c.out_rows() * width;
  const bool empty = c.rows == 0 || c.num_items == 0;
  if (empty) return out_elems > 0 ? cudaMemsetAsync(out, 0, out_elems * sizeof(T), stream) : cudaSuccess;
  cudaError_t err = cudaSuccess;
  if constexpr (SLOT == TpSlot::kY || SLOT == TpSlot::kW)
    if (c.nodes >= 0 && c.uvu_shape != 0 && launch_uvu_shaped_edge_slot<SLOT, T>(stream, c, paths, pw, ops, out, &err))
      return err;
  if constexpr (SLOT == TpSlot::kZ || SLOT == TpSlot::kX) {
    if (c.scatters() && c.kernel == core::TpKernel::kUvu && launch_uvu_edges<SLOT, T>(stream, c, paths, pw, ops, out, &err))
      return err;
    if (c.segmented()) return launch_segmented<SLOT, T>(stream, c, paths, cg_ijk, cg_c, pw, ops, out);
  }
  if constexpr (SLOT == TpSlot::kW)
    if (c.nodes >= 0 && !c.shared_w && c.kernel == core::TpKernel::kUvu &&
        launch_uvu_edges<SLOT, T>(stream, c, paths, pw, ops, out, &err))
      return err;
  if constexpr (SLOT == TpSlot::kZ)
    if (c.kernel == core::TpKernel::kUvu && c.uvu_shape != 0 && launch_uvu_shaped<T>(stream, c, paths, pw, ops, out, &err))
      return err;
  if (c.kernel == core::TpKernel::kUvu && launch_uvu<SLOT, T>(stream, c, paths, pw, ops, out, &err)) return err;

  const size_t table = align16(c.num_paths * sizeof(TpPath));
  const size_t sh_bytes = c.sh_lmax >= 0 ? kShRowElems * sizeof(T) : 0;
  const bool smem_acc = table + align16(width * sizeof(T)) + sh_bytes <= kSmemBudget;
  // Global accumulation needs a zeroed output; so does the cross-block sum of shared-weight grads.
  if (!smem_acc || c.reduces_rows() || c.scatters()) {
    err = cudaMemsetAsync(out, 0, out_elems * sizeof(T), stream);
    if (err != cudaSuccess) return err;
  }
  const int64_t max_blocks = c.reduces_rows() ? 4 * multiprocessors() : (int64_t(1) << 20);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(c.rows, max_blocks));
  const size_t smem = table + (smem_acc ? align16(width * sizeof(T)) : 0) + sh_bytes;
  if (smem_acc)
    tp_kernel<SLOT, T, true><<<blocks, kThreads, smem, stream>>>(c, paths, cg_ijk, cg_c, pw, ops[0], ops[1],
                                                                  ops[2], ops[3], out);
  else
    tp_kernel<SLOT, T, false><<<blocks, kThreads, smem, stream>>>(c, paths, cg_ijk, cg_c, pw, ops[0], ops[1],
                                                                   ops[2], ops[3], out);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_tp(cudaStream_t stream, const TpCall& c, const TpPath* paths, const int32_t* cg_ijk,
                      const T* cg_c, const T* pw, const T* const ops[4], T* out) {
  switch (c.slot) {
    case TpSlot::kX: return launch<TpSlot::kX, T>(stream, c, paths, cg_ijk, cg_c, pw, ops, out);
    case TpSlot::kY: return launch<TpSlot::kY, T>(stream, c, paths, cg_ijk, cg_c, pw, ops, out);
    case TpSlot::kW: return launch<TpSlot::kW, T>(stream, c, paths, cg_ijk, cg_c, pw, ops, out);
    default: return launch<TpSlot::kZ, T>(stream, c, paths, cg_ijk, cg_c, pw, ops, out);
  }
}

template <typename T>
cudaError_t launch_tp_grads(cudaStream_t stream, const TpCall& cy, const TpCall& cw, const TpPath* paths,
                         const int32_t* cg_ijk, const T* cg_c, const T* pw, const T* x, const T* y, const T* w,
                         const T* z, T* dy, T* dw, T* dx, const core::DxLists& dx_lists) {
  cudaError_t err = cudaSuccess;
  if (dy && dw && launch_uvu_shaped_grads<T>(stream, cy, paths, pw, x, y, w, z, dx, dy, dw, &err)) return err;
  if (launch_uvu_shaped_edge_grads<T>(stream, core::with_sh_of(cy, cw), paths, pw, x, y, w, z, dx, dy, dw, &err,
                                      dx_lists))
    return err;
  if (dx) return cudaErrorInvalidValue;  // the handler asks for dx only where the lines above serve it
  // Measured on H100 (benchmarks/NOTES.md, session 6): the fused pass wins on graph calls (MACE-medium
  // conv, dy+dw 1.12 ms against 1.66 for the two kernels); the y gradient alone and plain products keep
  // the row kernels until the edge kernel is measured faster there.
  if (dy && dw && cy.nodes >= 0 && cy.rows > 0 && cy.num_items > 0) {
    const TpCall fused = core::with_sh_of(cy, cw);  // slot y, with the weight gradient's view of y
    if (launch_uvu_edges_y<T>(stream, fused, paths, pw, x, y, w, z, dy, dw, &err)) return err;
  }
  const T* ops_y[4] = {x, nullptr, w, z};
  const T* ops_w[4] = {x, y, nullptr, z};
  if (dy) err = launch_tp<T>(stream, cy, paths, cg_ijk, cg_c, pw, ops_y, dy);
  return err != cudaSuccess || !dw ? err : launch_tp<T>(stream, cw, paths, cg_ijk, cg_c, pw, ops_w, dw);
}

template <typename T>
cudaError_t launch_tp_grads2(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* x,
                             const T* y, const T* w, const T* z, const T* c_dy, const T* c_dw, T* c_x, T* c_w, T* c_z) {
  cudaError_t err = cudaSuccess;
  if (launch_uvu_shaped_edge_grads2<T>(stream, c, paths, pw, x, y, w, z, c_dy, c_dw, c_x, c_w, c_z, &err)) return err;
  return cudaErrorInvalidValue;  // the handler checked that the call is one the kernel serves
}

template cudaError_t launch_tp<float>(cudaStream_t, const TpCall&, const TpPath*, const int32_t*, const float*,
                                      const float*, const float* const[4], float*);
template cudaError_t launch_tp<double>(cudaStream_t, const TpCall&, const TpPath*, const int32_t*,
                                       const double*, const double*, const double* const[4], double*);

template cudaError_t launch_tp_grads<float>(cudaStream_t, const TpCall&, const TpCall&, const TpPath*, const int32_t*,
                                         const float*, const float*, const float*, const float*, const float*,
                                         const float*, float*, float*, float*, const core::DxLists&);
template cudaError_t launch_tp_grads<double>(cudaStream_t, const TpCall&, const TpCall&, const TpPath*, const int32_t*,
                                          const double*, const double*, const double*, const double*,
                                          const double*, const double*, double*, double*, double*,
                                          const core::DxLists&);

template cudaError_t launch_tp_grads2<float>(cudaStream_t, const TpCall&, const TpPath*, const float*, const float*,
                                             const float*, const float*, const float*, const float*, const float*,
                                             float*, float*, float*);
template cudaError_t launch_tp_grads2<double>(cudaStream_t, const TpCall&, const TpPath*, const double*, const double*,
                                              const double*, const double*, const double*, const double*,
                                              const double*, double*, double*, double*);

}  // namespace jbm::cuda
