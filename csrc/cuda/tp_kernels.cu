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
    T* dst = SMEM ? acc : (reduce ? out : out + r * width);
    const T* xr = x ? x + r * c.dim_x : nullptr;
    const T* yr = y ? y + r * c.dim_y : nullptr;
    const T* wr = w ? w + r * wrow : nullptr;
    const T* zr = z ? z + r * c.dim_z : nullptr;
    auto add = [dst](int64_t idx, T v) { atomicAdd(dst + idx, v); };
    for (int64_t it = threadIdx.x; it < c.num_items; it += blockDim.x) {
      const int32_t p = core::tp_find_path(paths, c.num_paths, it);
      core::tp_item<SLOT>(paths[p], it - paths[p].item_begin, pw[p], c.with_unweighted, xr, yr, wr, zr, cg_ijk,
                          cg_c, add);
    }
    if (SMEM && !reduce) {
      __syncthreads();
      T* orow = out + r * width;
      for (int64_t k = threadIdx.x; k < width; k += blockDim.x) {
        orow[k] = acc[k];
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

// Shared memory of tp_uvu_kernel after the path table and path weights, in elements of T. The host
// (launch) and the device compute it with this same function.
struct UvuSmem {
  int64_t tile[4];      // offset of each input operand's row (slot order), -1 for the output slot
  int64_t acc;          // offset of the output accumulator
  int64_t part_stride;  // slot y: distance between the threads' partial y rows (odd: no bank conflicts)
  int64_t elems;        // total
};

__host__ __device__ inline UvuSmem uvu_smem(const TpCall& c, int threads) {
  UvuSmem m{};
  const int64_t widths[4] = {c.dim_x, c.dim_y, c.num_w, c.dim_z};
  int64_t n = 0;
  for (int s = 0; s < 4; ++s) {
    m.tile[s] = s == static_cast<int>(c.slot) ? -1 : n;
    if (s != static_cast<int>(c.slot)) n += widths[s];
  }
  m.acc = n;
  m.part_stride = c.dim_y | 1;
  n += c.slot == TpSlot::kY ? threads * m.part_stride : c.out_width();
  m.elems = n;
  return m;
}

__host__ __device__ inline size_t uvu_table_bytes(const TpCall& c, size_t elem) {
  return align16(c.num_paths * sizeof(TpPath)) + align16(c.num_paths * elem);
}

template <typename T>
__device__ void copy_row(T* dst, const T* src, int64_t n) {
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) dst[k] = src[k];
}

template <TpSlot SLOT, typename T>
__global__ void __launch_bounds__(kThreads) tp_uvu_kernel(TpCall c, const TpPath* __restrict__ paths_g,
                                                          const T* __restrict__ pw_g, const T* x, const T* y,
                                                          const T* w, const T* z, T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  T* pw = reinterpret_cast<T*>(smem_raw + align16(c.num_paths * sizeof(TpPath)));
  T* data = reinterpret_cast<T*>(smem_raw + uvu_table_bytes(c, sizeof(T)));
  for (int k = threadIdx.x; k < c.num_paths * core::kTpPathFields; k += blockDim.x)
    reinterpret_cast<int32_t*>(paths)[k] = reinterpret_cast<const int32_t*>(paths_g)[k];
  for (int k = threadIdx.x; k < c.num_paths; k += blockDim.x) pw[k] = pw_g[k];

  const UvuSmem m = uvu_smem(c, blockDim.x);
  const T* ops[4] = {x, y, w, z};
  const int64_t widths[4] = {c.dim_x, c.dim_y, c.num_w, c.dim_z};
  T* tiles[4];
  for (int s = 0; s < 4; ++s) tiles[s] = m.tile[s] >= 0 ? data + m.tile[s] : nullptr;
  T* acc = data + m.acc;
  const bool reduce = c.reduces_rows();
  const bool staged_w = SLOT != TpSlot::kW && c.shared_w;  // shared weights: staged once per block
  if (staged_w) copy_row(tiles[2], w, c.num_w);
  if (reduce)
    for (int64_t k = threadIdx.x; k < c.num_w; k += blockDim.x) acc[k] = T(0);

  for (int64_t r = blockIdx.x; r < c.rows; r += gridDim.x) {
    for (int s = 0; s < 4; ++s)
      if (s != static_cast<int>(SLOT) && !(s == 2 && c.shared_w)) copy_row(tiles[s], ops[s] + r * widths[s], widths[s]);
    if (!reduce) {
      const int64_t n = SLOT == TpSlot::kY ? blockDim.x * m.part_stride : c.out_width();
      for (int64_t k = threadIdx.x; k < n; k += blockDim.x) acc[k] = T(0);
    }
    __syncthreads();

    T* dst = SLOT == TpSlot::kY ? acc + threadIdx.x * m.part_stride : acc;
    for (int32_t pi = 0; pi < c.num_paths; ++pi) {
      const TpPath& p = paths[pi];
      if (!core::uvu_path_active<SLOT>(p, c.with_unweighted)) continue;
      core::uvu_dispatch(p, [&](auto l1, auto l2, auto lo) {
        for (int32_t u = threadIdx.x; u < p.mul1; u += blockDim.x)
          core::uvu_apply<SLOT, decltype(l1)::value, decltype(l2)::value, decltype(lo)::value>(
              p, u, pw[pi], tiles[0], tiles[1], tiles[2], tiles[3], dst);
      });
    }
    __syncthreads();

    if (!reduce) {
      if constexpr (SLOT == TpSlot::kY) {
        // dy[j] = sum over threads of their partials: warps take components, lanes take threads.
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
        for (int j = warp; j < c.dim_y; j += warps) {
          T v = T(0);
          for (int t = lane; t < blockDim.x; t += 32) v += acc[t * m.part_stride + j];
          for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
          if (lane == 0) out[r * c.dim_y + j] = v;
        }
      } else {
        const int64_t width = c.out_width();
        for (int64_t k = threadIdx.x; k < width; k += blockDim.x) out[r * width + k] = acc[k];
      }
      __syncthreads();
    }
  }
  if (reduce)
    for (int64_t k = threadIdx.x; k < c.num_w; k += blockDim.x) atomicAdd(out + k, acc[k]);
}

int multiprocessors() {
  static std::atomic<int> cached[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 132;
  int n = cached[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 132;
    cached[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Largest dynamic shared memory a block may opt in to (48 KiB without opting in).
size_t smem_optin_limit() {
  int device = 0, bytes = 48 * 1024;
  if (cudaGetDevice(&device) == cudaSuccess)
    cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return static_cast<size_t>(bytes);
}

// Returns false when the problem's rows do not fit in shared memory (the caller then runs tp_kernel).
template <TpSlot SLOT, typename T>
bool launch_uvu(cudaStream_t stream, const TpCall& c, const TpPath* paths, const T* pw, const T* const ops[4], T* out,
                cudaError_t* err) {
  const size_t smem = uvu_table_bytes(c, sizeof(T)) + uvu_smem(c, kThreads).elems * sizeof(T);
  if (smem > smem_optin_limit()) return false;
  auto kernel = tp_uvu_kernel<SLOT, T>;
  if (smem > 48 * 1024) {
    *err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (*err != cudaSuccess) return true;
  }
  if (c.reduces_rows()) {
    *err = cudaMemsetAsync(out, 0, c.num_w * sizeof(T), stream);
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
  const int64_t out_elems = c.reduces_rows() ? width : c.rows * width;
  const bool empty = c.rows == 0 || c.num_items == 0;
  if (empty) return out_elems > 0 ? cudaMemsetAsync(out, 0, out_elems * sizeof(T), stream) : cudaSuccess;
  cudaError_t err = cudaSuccess;
  if (c.kernel == core::TpKernel::kUvu && launch_uvu<SLOT, T>(stream, c, paths, pw, ops, out, &err)) return err;

  const size_t table = align16(c.num_paths * sizeof(TpPath));
  const bool smem_acc = table + width * sizeof(T) <= kSmemBudget;
  // Global accumulation needs a zeroed output; so does the cross-block sum of shared-weight grads.
  if (!smem_acc || c.reduces_rows()) {
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
