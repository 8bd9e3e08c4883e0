// JAX-free driver of one jbm_tp call, written by tools/dump_tp_call.py: builds the call exactly as the
// CUDA handler does (check_tp of csrc/ffi/tp_problem.h, then cuda::launch_tp), checks the output
// against the one JAX computed, and times it with CUDA events. It exists for Nsight Compute, which
// segfaults when it attaches to a JAX process on the H100 machine but profiles plain CUDA programs:
//   ncu --clock-control none -k regex:tp_ ./jbm_kernel_driver DIR 1
// Build and use: tools/kernel_driver/run.sh.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/tp_kernels.h"
#include "ffi/tp_problem.h"

namespace ffi = xla::ffi;

namespace {

struct Array {
  ffi::DataType dtype = ffi::DataType::F32;
  std::vector<int64_t> dims;
  void* device = nullptr;
  size_t bytes = 0;
  XLA_FFI_Buffer buf{};
};

size_t element_bytes(ffi::DataType t) { return t == ffi::DataType::F64 ? 8 : 4; }

bool parse_dtype(const std::string& name, ffi::DataType* t) {
  if (name == "float32") *t = ffi::DataType::F32;
  else if (name == "float64") *t = ffi::DataType::F64;
  else if (name == "int32") *t = ffi::DataType::S32;
  else return false;
  return true;
}

#define CHECK_CUDA(expr)                                                                     \
  do {                                                                                       \
    const cudaError_t err_ = (expr);                                                         \
    if (err_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(err_));                     \
      return 1;                                                                              \
    }                                                                                        \
  } while (0)

// "DTYPE RANK DIMS..." into an Array with device memory (filled from `file` when given, else zeroed).
int make_array(std::istringstream& in, const std::string& dir, const std::string& file, Array* a) {
  std::string dtype;
  int rank = 0;
  in >> dtype >> rank;
  if (!parse_dtype(dtype, &a->dtype) || rank < 0) return std::fprintf(stderr, "bad array spec\n"), 1;
  a->dims.resize(rank);
  size_t count = 1;
  for (auto& d : a->dims) in >> d, count *= static_cast<size_t>(d);
  a->bytes = count * element_bytes(a->dtype);
  if (a->bytes > 0) {
    CHECK_CUDA(cudaMalloc(&a->device, a->bytes));
    if (file.empty()) {
      CHECK_CUDA(cudaMemset(a->device, 0, a->bytes));
    } else {
      std::vector<char> host(a->bytes);
      std::ifstream f(dir + "/" + file, std::ios::binary);
      if (!f.read(host.data(), static_cast<std::streamsize>(a->bytes)))
        return std::fprintf(stderr, "cannot read %zu bytes of %s\n", a->bytes, file.c_str()), 1;
      CHECK_CUDA(cudaMemcpy(a->device, host.data(), a->bytes, cudaMemcpyHostToDevice));
    }
  }
  a->buf.struct_size = XLA_FFI_Buffer_STRUCT_SIZE;
  a->buf.dtype = static_cast<XLA_FFI_DataType>(a->dtype);
  a->buf.data = a->device;
  a->buf.rank = rank;
  a->buf.dims = a->dims.data();
  return 0;
}

template <typename T>
int run(const std::string& dir, const std::map<std::string, int64_t>& attr, std::vector<Array>& operands,
        std::vector<Array>& results, const std::string& expected_file, int repeats) {
  std::vector<ffi::AnyBuffer> op, res;
  for (auto& a : operands) op.emplace_back(&a.buf);
  for (auto& a : results) res.emplace_back(&a.buf);
  if (op.size() != 12 || res.size() != 2) return std::fprintf(stderr, "expected 12 operands and 2 results\n"), 1;
  auto at = [&](const char* name) { return attr.count(name) ? attr.at(name) : int64_t(-1); };
  jbm::TpBuffers bufs;
  jbm::core::TpCall call;
  const ffi::Error error = jbm::check_tp(
      op[0], op[1], op[2], op[3], op[4], op[5], op[6], op[7], &res[1], op[8], op[9], op[10], op[11], &res[0],
      int32_t(at("slot")), int32_t(at("shared_w")), int32_t(at("with_unweighted")), int32_t(at("dim_x")),
      int32_t(at("dim_y")), int32_t(at("dim_z")), int32_t(at("num_w")), at("num_items"), int32_t(at("kernel")),
      int32_t(at("zero_fill")), at("num_nodes"), int32_t(at("sh_lmax")), int32_t(at("sh_normalize")),
      int32_t(at("sh_normalization")), int32_t(at("yc_width")), &bufs, &call);
  if (error.failure()) return std::fprintf(stderr, "check_tp: %s\n", error.message().c_str()), 1;
  const T* ops[4];
  for (int s = 0; s < 4; ++s) ops[s] = bufs.ops[s] ? static_cast<const T*>(bufs.ops[s]->untyped_data()) : nullptr;
  T* out = static_cast<T*>(results[0].device);
  auto launch = [&]() {
    return jbm::cuda::launch_tp<T>(nullptr, call, static_cast<const jbm::core::TpPath*>(op[8].untyped_data()),
                                   static_cast<const int32_t*>(op[9].untyped_data()),
                                   static_cast<const T*>(op[10].untyped_data()),
                                   static_cast<const T*>(op[11].untyped_data()), ops, out);
  };
  CHECK_CUDA(launch());
  CHECK_CUDA(cudaDeviceSynchronize());

  // The output against JAX's (same kernels, so equal up to the order of atomic adds).
  const size_t n = results[0].bytes / sizeof(T);
  std::vector<T> got(n), want(n);
  CHECK_CUDA(cudaMemcpy(got.data(), out, results[0].bytes, cudaMemcpyDeviceToHost));
  std::ifstream f(dir + "/" + expected_file, std::ios::binary);
  if (!f.read(reinterpret_cast<char*>(want.data()), static_cast<std::streamsize>(results[0].bytes)))
    return std::fprintf(stderr, "cannot read the expected output\n"), 1;
  double diff = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(double(got[i]) - double(want[i])));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  const double rel = diff / std::max(scale, 1e-300);

  std::vector<float> ms;
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int r = 0; r < repeats; ++r) {
    CHECK_CUDA(cudaEventRecord(start));
    CHECK_CUDA(launch());
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms.empty() ? 0.0 : ms[ms.size() / 2];
  std::printf("%s: slot %lld, %lld rows, median %.4f ms over %d launches (min %.4f), relative error vs JAX %.2e%s\n",
              dir.c_str(), static_cast<long long>(at("slot")), static_cast<long long>(call.rows), median, repeats,
              ms.empty() ? 0.0 : ms.front(), rel, rel > (sizeof(T) == 4 ? 1e-5 : 1e-12) ? "  MISMATCH" : "");
  return rel > (sizeof(T) == 4 ? 1e-5 : 1e-12) ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return std::fprintf(stderr, "usage: %s DIR [repeats]\n", argv[0]), 1;
  const std::string dir = argv[1];
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  std::ifstream f(dir + "/call.txt");
  if (!f) return std::fprintf(stderr, "no %s/call.txt\n", dir.c_str()), 1;
  std::map<std::string, int64_t> attr;
  std::vector<Array> operands, results;
  operands.reserve(16), results.reserve(4);  // XLA_FFI_Buffer::dims points into each Array
  std::string line, expected;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string kind;
    in >> kind;
    if (kind == "attr") {
      std::string name;
      int64_t value = 0;
      in >> name >> value;
      attr[name] = value;
    } else if (kind == "operand") {
      std::string file;
      in >> file;
      operands.emplace_back();
      if (make_array(in, dir, file, &operands.back())) return 1;
    } else if (kind == "result") {
      results.emplace_back();
      if (make_array(in, dir, "", &results.back())) return 1;
    } else if (kind == "expected") {
      in >> expected;
    }
  }
  if (operands.empty() || results.empty()) return std::fprintf(stderr, "incomplete call.txt\n"), 1;
  return operands[0].dtype == ffi::DataType::F64 ? run<double>(dir, attr, operands, results, expected, repeats)
                                                 : run<float>(dir, attr, operands, results, expected, repeats);
}
