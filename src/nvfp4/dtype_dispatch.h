// Calls f(T{}) with T the C++ type of a float32, float16 or bfloat16 tensor: the three input types the
// NVFP4 kernels accept (ATen's floating dispatch would also instantiate double, which they do not).
#pragma once
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "util/error.h"

namespace qad::nvfp4 {

template <typename F>
void dispatch_float_types(c10::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case c10::ScalarType::Float: f(float{}); break;
    case c10::ScalarType::Half: f(c10::Half{}); break;
    case c10::ScalarType::BFloat16: f(c10::BFloat16{}); break;
    default: fail("{}: unsupported dtype {}", op, c10::toString(t));
  }
}

}  // namespace qad::nvfp4
