// Spherical harmonics on the GPU: one thread per vector, every degree unrolled in registers.
//
// Bytes decide (l_max = 3, fp32: 12 B in, 64 B out per vector). A thread's 16 outputs are contiguous,
// so writing them straight from registers would make each warp store instruction touch 32 rows 64 B
// apart. Instead the block stages its rows in shared memory (row stride padded to an odd number of
// words: no bank conflicts) and then writes the whole tile with consecutive threads on consecutive
// words. The vjp reads its cotangent rows the same way, in reverse.
#include <algorithm>

#include "cuda/sh_kernels.h"

namespace jbm::cuda {
namespace {

using core::ShCall;
using core::ShMode;

// Contiguous rows [row0, row0 + rows) of width W between global memory and a padded tile.
template <int W, typename T>
__device__ void tile_load(const T* __restrict__ src, int64_t row0, int rows, T* tile) {
  constexpr int S = W + 1;
  const T* base = src + row0 * W;
  for (int k = threadIdx.x; k < rows * W; k += blockDim.x) tile[(k / W) * S + k % W] = base[k];
}
template <int W, typename T>
__device__ void tile_store(const T* tile, int64_t row0, int rows, T* __restrict__ dst) {
  constexpr int S = W + 1;
  T* base = dst + row0 * W;
  for (int k = threadIdx.x; k < rows * W; k += blockDim.x) base[k] = tile[(k / W) * S + k % W];
}

template <int LMAX, ShMode MODE, typename T>
__global__ void sh_kernel(const T* __restrict__ v, const T* __restrict__ aux, T* __restrict__ out,
                          int64_t n, bool normalize, core::ShNormalization nrm) {
  constexpr int D = core::sh_dim(LMAX);
  constexpr int S = D + 1;
  extern __shared__ unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * blockDim.x;
  const int rows = static_cast<int>(min(static_cast<int64_t>(blockDim.x), n - row0));
  const int64_t i = row0 + threadIdx.x;

  if constexpr (MODE == ShMode::kVjp) {
    tile_load<D>(aux, row0, rows, tile);
    __syncthreads();
  }
  if (threadIdx.x < rows) {
    T vi[3] = {v[3 * i], v[3 * i + 1], v[3 * i + 2]};
    T* mine = tile + threadIdx.x * S;
    if constexpr (MODE == ShMode::kFwd) {
      T y[D];
      core::sh_values<LMAX>(vi, normalize, nrm, y);
#pragma unroll
      for (int m = 0; m < D; ++m) mine[m] = y[m];
    } else if constexpr (MODE == ShMode::kJvp) {
      T dv[3] = {aux[3 * i], aux[3 * i + 1], aux[3 * i + 2]};
      T dy[D];
      core::sh_jvp<LMAX>(vi, dv, normalize, nrm, dy);
#pragma unroll
      for (int m = 0; m < D; ++m) mine[m] = dy[m];
    } else {
      T g[D];
#pragma unroll
      for (int m = 0; m < D; ++m) g[m] = mine[m];
      T gv[3];
      core::sh_vjp<LMAX>(vi, g, normalize, nrm, gv);
      out[3 * i] = gv[0];
      out[3 * i + 1] = gv[1];
      out[3 * i + 2] = gv[2];
    }
  }
  if constexpr (MODE != ShMode::kVjp) {
    __syncthreads();
    tile_store<D>(tile, row0, rows, out);
  }
}

// Largest block (<= 256 threads) whose padded tile fits in 24 KiB, so several blocks share an SM.
template <typename T> int block_size(int dim) {
  int threads = 256;
  while (threads > 32 && static_cast<size_t>(threads) * (dim + 1) * sizeof(T) > 24 * 1024) threads /= 2;
  return threads;
}

template <int LMAX, ShMode MODE, typename T>
cudaError_t launch(cudaStream_t stream, const ShCall& c, const T* v, const T* aux, T* out) {
  constexpr int D = core::sh_dim(LMAX);
  const int threads = block_size<T>(D);
  const int64_t blocks = (c.n + threads - 1) / threads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const size_t smem = static_cast<size_t>(threads) * (D + 1) * sizeof(T);
  sh_kernel<LMAX, MODE, T><<<static_cast<unsigned>(blocks), threads, smem, stream>>>(
      v, aux, out, c.n, c.normalize, c.normalization);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_sh(cudaStream_t stream, const ShCall& c, const T* v, const T* aux, T* out) {
  if (c.n == 0) return cudaSuccess;
  cudaError_t err = cudaErrorInvalidValue;
  core::dispatch_lmax(c.lmax, [&](auto lmax) {
    constexpr int L = decltype(lmax)::value;
    switch (c.mode) {
      case ShMode::kFwd: err = launch<L, ShMode::kFwd>(stream, c, v, aux, out); break;
      case ShMode::kJvp: err = launch<L, ShMode::kJvp>(stream, c, v, aux, out); break;
      case ShMode::kVjp: err = launch<L, ShMode::kVjp>(stream, c, v, aux, out); break;
    }
  });
  return err;
}

template cudaError_t launch_sh<float>(cudaStream_t, const ShCall&, const float*, const float*, float*);
template cudaError_t launch_sh<double>(cudaStream_t, const ShCall&, const double*, const double*, double*);

}  // namespace jbm::cuda
