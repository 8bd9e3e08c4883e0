// Small helpers shared by every handler: messages that name the op and the argument.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jbm::ffi_util {

namespace ffi = xla::ffi;

template <typename... Args> std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
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
