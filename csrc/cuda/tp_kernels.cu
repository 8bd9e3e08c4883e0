// Tensor product on the GPU, generic over the problem tables (csrc/core/tp.h): one block per row
// (grid-stride), threads over the items of all paths, contributions accumulated with shared-memory
// atomics into the row's output, which is then written once, coalesced. Outputs too wide for shared
// memory accumulate in global memory instead. The gradient of shared weights (a sum over rows) keeps
// one accumulator per block and adds it to the output at the end.
//
// This is the correct, general baseline every slot and problem runs on; the specialised, unrolled
// kernels for the hot problems (MACE/NequIP uvu) are the next step (see benchmarks/NOTES.md).
#include <algorithm>

#include "cuda/tp_kernels.h"

namespace jbm::cuda {
namespace {

using core::TpCall;
using core::TpPath;
using core::TpSlot;

constexpr int kThreads = 128;
constexpr size_t kSmemBudget = 40 * 1024;

template <TpSlot SLOT, typename T, bool SMEM>
__global__ void __launch_bounds__(kThreads) tp_kernel(TpCall c, const TpPath* __restrict__ paths_g,
                                                      const int32_t* __restrict__ cg_ijk,
                                                      const T* __restrict__ cg_c, const T* x, const T* y,
                                                      const T* w, const T* z, T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TpPath* paths = reinterpret_cast<TpPath*>(smem_raw);
  T* acc = reinterpret_cast<T*>(smem_raw + ((c.num_paths * sizeof(TpPath) + 15) / 16) * 16);
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
      core::tp_item<SLOT>(paths[p], it - paths[p].item_begin, c.with_unweighted, xr, yr, wr, zr, cg_ijk, cg_c, add);
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

template <TpSlot SLOT, typename T>
cudaError_t launch(cudaStream_t stream, const TpCall& c, const TpPath* paths, const int32_t* cg_ijk,
                   const T* cg_c, const T* const ops[4], T* out) {
  const int64_t width = c.out_width();
  const size_t table = ((c.num_paths * sizeof(TpPath) + 15) / 16) * 16;
  const bool smem_acc = table + width * sizeof(T) <= kSmemBudget;
  const int64_t out_elems = c.reduces_rows() ? width : c.rows * width;
  // Global accumulation needs a zeroed output; so does the cross-block sum of shared-weight grads,
  // and so does a call with nothing to add.
  const bool empty = c.rows == 0 || c.num_items == 0;
  if (out_elems > 0 && (empty || !smem_acc || c.reduces_rows())) {
    cudaError_t e = cudaMemsetAsync(out, 0, out_elems * sizeof(T), stream);
    if (e != cudaSuccess || empty) return e;
  }
  if (empty) return cudaSuccess;
  const int64_t max_blocks = c.reduces_rows() ? 4 * 132 : (int64_t(1) << 20);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(c.rows, max_blocks));
  const size_t smem = table + (smem_acc ? width * sizeof(T) : 0);
  if (smem_acc)
    tp_kernel<SLOT, T, true><<<blocks, kThreads, smem, stream>>>(c, paths, cg_ijk, cg_c, ops[0], ops[1], ops[2],
                                                                  ops[3], out);
  else
    tp_kernel<SLOT, T, false><<<blocks, kThreads, smem, stream>>>(c, paths, cg_ijk, cg_c, ops[0], ops[1],
                                                                   ops[2], ops[3], out);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_tp(cudaStream_t stream, const TpCall& c, const TpPath* paths, const int32_t* cg_ijk,
                      const T* cg_c, const T* const ops[4], T* out) {
  switch (c.slot) {
    case TpSlot::kX: return launch<TpSlot::kX, T>(stream, c, paths, cg_ijk, cg_c, ops, out);
    case TpSlot::kY: return launch<TpSlot::kY, T>(stream, c, paths, cg_ijk, cg_c, ops, out);
    case TpSlot::kW: return launch<TpSlot::kW, T>(stream, c, paths, cg_ijk, cg_c, ops, out);
    default: return launch<TpSlot::kZ, T>(stream, c, paths, cg_ijk, cg_c, ops, out);
  }
}

template cudaError_t launch_tp<float>(cudaStream_t, const TpCall&, const TpPath*, const int32_t*, const float*,
                                      const float* const[4], float*);
template cudaError_t launch_tp<double>(cudaStream_t, const TpCall&, const TpPath*, const int32_t*,
                                       const double*, const double* const[4], double*);

}  // namespace jbm::cuda
