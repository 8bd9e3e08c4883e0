// Tensor product on the GPU: two kernels, both one block per row (grid-stride) writing the row's output
// once, coalesced, from shared memory; the gradient of shared weights (a sum over rows) keeps one
// accumulator per block and adds it to the output at the end.
//
// * tp_uvu_kernel (core::TpKernel::kUvu, the MACE/NequIP/Nequix channelwise problems): the rows of the
//   three inputs are staged in shared memory with coalesced loads, then threads run over the channels
//   of each path with compile-time CG blocks (csrc/core/tp_uvu.h), each thread owning its channel's
//   outputs (no atomics). The y gradient, a sum over channels, is accumulated per thread and reduced
//   by warps at the end of the row.
// * tp_kernel (everything else): threads over the items of all paths (csrc/core/tp.h), contributions
//   accumulated with shared-memory atomics (global ones for outputs too wide for shared memory).
#include <algorithm>
#include <atomic>

#include "core/tp_uvu.h"
#include "cuda/tp_kernels.h"

namespace jbm::cuda {
namespace {

using core::TpCall;
using core::TpPath;
using core::TpSlot;

constexpr int kThreads = 128;
constexpr size_t kSmemBudget = 40 * 1024;

__host__ __device__ constexpr size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

template <TpSlot SLOT, typename T, bool SMEM>
__global__ void __launch_bounds__(kThreads) tp_kernel(TpCall c, const TpPath* __restrict__ paths_g,
                                                      const int32_t* __restrict__ cg_ijk,
                                                      const T* __restrict__ cg_c, const T* __restrict__ pw,
                                                      const T* x, const T* y,
                                                      const T* w, const T* z, T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  T* acc = reinterpret_cast<T*>(smem_raw + align16(c.num_paths * sizeof(TpPath)));
  for (int k = threadIdx.x; k < c.num_paths * core::kTpPathFields; k += blockDim.x)
    reinterpret_cast<int32_t*>(paths)[k] = reinterpret_cast<const int32_t*>(paths_g)[k];

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
    const T* yr = y ? y + r * c.dim_y : nullptr;
    const T* wr = w ? w + r * wrow : nullptr;
    const T* zr = z ? z + rz * c.dim_z : nullptr;
    auto add = [dst](int64_t idx, T v) { atomicAdd(dst + idx, v); };
    for (int64_t it = valid ? threadIdx.x : c.num_items; it < c.num_items; it += blockDim.x) {
      const int32_t p = core::tp_find_path(paths, c.num_paths, it);
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
__host__ __device__ inline size_t uvu_smem_bytes(const TpCall& c, int threads, size_t elem) {
  const int64_t extra = c.slot == TpSlot::kY ? threads * uvu_part_stride(c) : c.reduces_rows() ? c.num_w : 0;
  return uvu_table_bytes(c, elem) + extra * elem;
}

// The irreps block a path writes in slot SLOT's operand (z: its output block, x: its first input).
template <TpSlot SLOT>
__device__ int32_t uvu_target(const TpPath& p) { return SLOT == TpSlot::kZ ? p.off_out : p.off1; }

// Slots z and x: out[u, :] of one irrep block, summed over the run of paths [first, end) writing it
// (Python groups the paths by that block), for rows' operands x, y, w, z.
template <TpSlot SLOT, int LT, typename T>
__device__ void uvu_block(const TpCall& c, const TpPath* paths, const T* pw, int32_t first, int32_t end, int32_t u,
                          const T* x, const T* y, const T* w, const T* z, T* out, bool scatter) {
  constexpr int DT = 2 * LT + 1;
  T acc[DT];
  for (int k = 0; k < DT; ++k) acc[k] = T(0);
  for (int32_t pi = first; pi < end; ++pi) {
    const TpPath& p = paths[pi];
    if (!core::uvu_path_active<SLOT>(p, c.with_unweighted)) continue;
    const T scale = p.off_w >= 0 ? pw[pi] * w[p.off_w + u] : pw[pi];
    core::uvu_dispatch(p, [&](auto l1, auto l2, auto lo) {
      constexpr int L1 = decltype(l1)::value, L2 = decltype(l2)::value, LO = decltype(lo)::value;
      if constexpr ((SLOT == TpSlot::kZ ? LO : L1) == LT) {
        const T* xu = SLOT == TpSlot::kX ? nullptr : x + p.off1 + u * (2 * L1 + 1);
        const T* zu = SLOT == TpSlot::kZ ? nullptr : z + p.off_out + u * (2 * LO + 1);
        core::uvu_channel<L1, L2, LO, SLOT>(xu, y + p.off2, zu, scale, acc);
      }
    });
  }
  T* dst = out + uvu_target<SLOT>(paths[first]) + u * DT;
  for (int k = 0; k < DT; ++k) {
    if (scatter)
      atomicAdd(dst + k, acc[k]);
    else
      dst[k] = acc[k];
  }
}

// GRAPH: rows are edges (gathers and scatters); a separate instantiation keeps the plain product lean.
template <TpSlot SLOT, typename T, bool GRAPH>
__global__ void __launch_bounds__(kThreads) tp_uvu_kernel(TpCall c, const TpPath* __restrict__ paths_g,
                                                          const T* __restrict__ pw_g, const T* __restrict__ x,
                                                          const T* __restrict__ y, const T* __restrict__ w,
                                                          const T* __restrict__ z, T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  T* pw = reinterpret_cast<T*>(smem_raw + align16(c.num_paths * sizeof(TpPath)));
  T* scratch = reinterpret_cast<T*>(smem_raw + uvu_table_bytes(c, sizeof(T)));
  for (int k = threadIdx.x; k < c.num_paths * core::kTpPathFields; k += blockDim.x)
    reinterpret_cast<int32_t*>(paths)[k] = reinterpret_cast<const int32_t*>(paths_g)[k];
  for (int k = threadIdx.x; k < c.num_paths; k += blockDim.x) pw[k] = pw_g[k];
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
    const T* yr = y ? y + r * c.dim_y : nullptr;
    const T* wr = w ? (c.shared_w ? w : w + r * c.num_w) : nullptr;
    const T* zr = z ? z + rz * c.dim_z : nullptr;
    if (!valid && !(SLOT == TpSlot::kY || (SLOT == TpSlot::kW && !reduce))) continue;  // dropped edge
    if constexpr (SLOT == TpSlot::kZ || SLOT == TpSlot::kX) {
      T* orow = out + (GRAPH ? c.out_row(r, rx, rz) : r) * c.out_width();
      for (int32_t first = 0, end; first < c.num_paths; first = end) {
        const int32_t target = uvu_target<SLOT>(paths[first]);
        for (end = first + 1; end < c.num_paths && uvu_target<SLOT>(paths[end]) == target;) ++end;
        const TpPath& p = paths[first];
        const int lt = ((SLOT == TpSlot::kZ ? p.dim_out : p.dim1) - 1) / 2;
        for (int32_t u = threadIdx.x; u < p.mul1; u += blockDim.x) {
          switch (lt) {
            case 0: uvu_block<SLOT, 0>(c, paths, pw, first, end, u, xr, yr, wr, zr, orow, scatter); break;
            case 1: uvu_block<SLOT, 1>(c, paths, pw, first, end, u, xr, yr, wr, zr, orow, scatter); break;
            case 2: uvu_block<SLOT, 2>(c, paths, pw, first, end, u, xr, yr, wr, zr, orow, scatter); break;
            default: uvu_block<SLOT, 3>(c, paths, pw, first, end, u, xr, yr, wr, zr, orow, scatter); break;
          }
        }
      }
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

// Largest dynamic shared memory a block may opt in to (48 KiB without opting in).
size_t smem_optin_limit() {
  return static_cast<size_t>(device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(48 * 1024));
}

// Returns false when the problem's scratch does not fit in shared memory (the caller then runs tp_kernel).
template <TpSlot SLOT, typename T>
bool launch_uvu(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* const ops[4], T* out,
                cudaError_t* err) {
  const size_t smem = uvu_smem_bytes(c, kThreads, sizeof(T));
  if (smem > smem_optin_limit()) return false;
  auto kernel = c.nodes >= 0 ? tp_uvu_kernel<SLOT, T, true> : tp_uvu_kernel<SLOT, T, false>;
  if (smem > 48 * 1024) {
    *err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (*err != cudaSuccess) return true;
  }
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

template <TpSlot SLOT, typename T>
cudaError_t launch(cudaStream_t stream, const TpCall& c, const TpPath* paths, const int32_t* cg_ijk,
                   const T* cg_c, const T* pw, const T* const ops[4], T* out) {
  const int64_t width = c.out_width();
  const int64_t out_elems = c.out_rows() * width;
  const bool empty = c.rows == 0 || c.num_items == 0;
  if (empty) return out_elems > 0 ? cudaMemsetAsync(out, 0, out_elems * sizeof(T), stream) : cudaSuccess;
  cudaError_t err = cudaSuccess;
  if (c.kernel == core::TpKernel::kUvu && launch_uvu<SLOT, T>(stream, c, paths, pw, ops, out, &err)) return err;

  const size_t table = align16(c.num_paths * sizeof(TpPath));
  const bool smem_acc = table + width * sizeof(T) <= kSmemBudget;
  // Global accumulation needs a zeroed output; so does the cross-block sum of shared-weight grads.
  if (!smem_acc || c.reduces_rows() || c.scatters()) {
    err = cudaMemsetAsync(out, 0, out_elems * sizeof(T), stream);
    if (err != cudaSuccess) return err;
  }
  const int64_t max_blocks = c.reduces_rows() ? 4 * multiprocessors() : (int64_t(1) << 20);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(c.rows, max_blocks));
  const size_t smem = table + (smem_acc ? width * sizeof(T) : 0);
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

template cudaError_t launch_tp<float>(cudaStream_t, const TpCall&, const TpPath*, const int32_t*, const float*,
                                      const float*, const float* const[4], float*);
template cudaError_t launch_tp<double>(cudaStream_t, const TpCall&, const TpPath*, const int32_t*,
                                       const double*, const double*, const double* const[4], double*);

}  // namespace jbm::cuda
