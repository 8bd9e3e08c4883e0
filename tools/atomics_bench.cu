// Rate of the scatter-adds a conv kernel could use (H100 question of session 20): every edge adds a row of
// W floats to a random target row of [nodes, W] (a warp per edge, the warp's lanes at consecutive
// addresses), as scalar atomics, as float2 / float4 vector atomics (sm_90), and as plain stores (the racy
// write-bandwidth baseline). Prints ms per pass (median of 20) and G rows-floats per second.
//   nvcc -O3 -std=c++17 -arch=sm_90 tools/atomics_bench.cu -o /tmp/atomics_bench && /tmp/atomics_bench
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

enum Kind { kScalar, kVec2, kVec4, kStore };

template <Kind K>
__global__ void scatter(const int* __restrict__ target, int edges, int width, float* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * blockDim.x / 32;
  for (int e = (blockIdx.x * blockDim.x + threadIdx.x) / 32; e < edges; e += warps) {
    float* row = out + size_t(target[e]) * width;
    const float v = 1.0f + e % 7;
    if constexpr (K == kScalar) {
      for (int k = lane; k < width; k += 32) atomicAdd(row + k, v);
    } else if constexpr (K == kVec2) {
      for (int k = lane * 2; k < width; k += 64) atomicAdd(reinterpret_cast<float2*>(row + k), make_float2(v, v));
    } else if constexpr (K == kVec4) {
      for (int k = lane * 4; k < width; k += 128)
        atomicAdd(reinterpret_cast<float4*>(row + k), make_float4(v, v, v, v));
    } else {
      for (int k = lane; k < width; k += 32) row[k] = v;
    }
  }
}

template <Kind K>
float time_kernel(const int* target, int edges, int width, float* out, int nodes) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> ms;
  const int blocks = 132 * 16;
  for (int rep = 0; rep < 23; ++rep) {
    cudaMemsetAsync(out, 0, size_t(nodes) * width * sizeof(float));
    cudaEventRecord(a);
    scatter<K><<<blocks, 128>>>(target, edges, width, out);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (rep >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2];
}

int main() {
  const int nodes = 5000, edges = 150000;
  std::mt19937 rng(0);
  std::vector<int> random_t(edges), sorted_t(edges);
  for (int e = 0; e < edges; ++e) random_t[e] = int(rng() % nodes);
  sorted_t = random_t;
  std::sort(sorted_t.begin(), sorted_t.end());
  int *d_random, *d_sorted;
  float* out;
  cudaMalloc(&d_random, edges * sizeof(int));
  cudaMalloc(&d_sorted, edges * sizeof(int));
  cudaMalloc(&out, size_t(nodes) * 1152 * sizeof(float));
  cudaMemcpy(d_random, random_t.data(), edges * sizeof(int), cudaMemcpyHostToDevice);
  cudaMemcpy(d_sorted, sorted_t.data(), edges * sizeof(int), cudaMemcpyHostToDevice);
  std::printf("| targets | width | scalar atomics ms | float2 ms | float4 ms | plain stores ms |\n|---|---|---|---|---|---|\n");
  for (int width : {512, 1152})
    for (int sorted = 0; sorted < 2; ++sorted) {
      const int* t = sorted ? d_sorted : d_random;
      const float s = time_kernel<kScalar>(t, edges, width, out, nodes);
      const float v2 = time_kernel<kVec2>(t, edges, width, out, nodes);
      const float v4 = time_kernel<kVec4>(t, edges, width, out, nodes);
      const float st = time_kernel<kStore>(t, edges, width, out, nodes);
      std::printf("| %s | %d | %.4f | %.4f | %.4f | %.4f |\n", sorted ? "sorted" : "random", width, s, v2, v4, st);
    }
  const cudaError_t err = cudaDeviceSynchronize();
  std::printf("(%d edges, %d nodes; %s)\n", edges, nodes, cudaGetErrorString(err));
  return err == cudaSuccess ? 0 : 1;
}
