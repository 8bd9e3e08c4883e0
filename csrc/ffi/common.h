// Small helpers shared by every handler: messages that name the op and the argument.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace jbm::ffi_util {

namespace ffi = xla::ffi;

// Messages are built by appending strings and std::to_string, not with iostreams: on the GPU machine's
// image (jaxlib 0.11.2) an ostringstream's `<< long` inside our module crashed the process
// (SIGSEGV in basic_ostream::_M_insert<long>, the locale facets of the module's copy; cuda-gdb backtrace
// in benchmarks/NOTES.md, session 9), so a handler's error became a crash instead of a Python exception.
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
void append(std::string& s, T v) {
  s += std::to_string(v);
}

template <typename... Args> std::string str(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}

template <typename... Args> ffi::Error invalid(const Args&... args) {
  return ffi::Error::InvalidArgument(str(args...));
}


inline const char* dtype_name(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::F64: return "float64";
    case ffi::DataType::S32: return "int32";
    case ffi::DataType::S64: return "int64";
    default: return "an unsupported dtype";
  }
}

inline bool is_supported_float(ffi::DataType t) {
  return t == ffi::DataType::F32 || t == ffi::DataType::F64;
}

}  // namespace jbm::ffi_util
