// Helpers of the CPU references: rounding a float to the tensor's element type as an ATen op in that type does.
#pragma once
#include <cmath>

namespace qad::fused::cpu {

// RN-even into T (c10::BFloat16 and c10::Half convert with round to nearest even) and back to float.
template <typename T>
inline float round_to(float v) {
  return static_cast<float>(static_cast<T>(v));
}

// The STE gradient of one element: passed through, or zeroed by the clipped STE where |pre-quant| > amax
// (NaN compares false, so it is zeroed too, as `abs(x) <= amax` does in the autograd op).
inline float ste(float grad, float pre_quant, bool clipped, float amax) {
  return clipped && !(std::fabs(pre_quant) <= amax) ? 0.0f : grad;
}

}  // namespace qad::fused::cpu
