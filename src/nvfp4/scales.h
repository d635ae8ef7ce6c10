// The NVFP4 scaling rules (docs/nvfp4.md), as scalar functions shared by the CPU reference and the CUDA
// kernels. Every step is one IEEE float32 operation in a fixed order, so both give identical bits.
//
//   global decode scale  s_g = A / 2688                      (A: per-tensor amax, 2688 = 6 * 448)
//   block scale          s_b = e4m3(clamp(a_b / (6 s_g), 2^-9, 448)), stored as 1.0 when a_b = 0
//   element              q   = e2m1(x / (s_b s_g))           (saturating, ties to even)
//   dequantized          x^  = (e2m1(q) * s_b) * s_g         (the first product is exact)
#pragma once
#include <cstdint>

#include "nvfp4/e2m1.h"
#include "nvfp4/e4m3.h"
#include "nvfp4/host_device.h"

namespace qad::nvfp4 {

constexpr int kBlockSize = 16;
constexpr float kScaleDenominator = kE2M1Max * kE4M3Max;  // 2688
constexpr uint8_t kE4M3One = 0x38;                         // 1.0, the stored scale of an all-zero block

QAD_HD bool is_finite(float x) { return x == x && x - x == 0.0f; }

QAD_HD float global_decode_scale(float amax) { return amax / kScaleDenominator; }

// a_b is the block's amax. Non-finite a_b: NaN gives the E4M3 NaN code, +Inf saturates to 448.
QAD_HD uint8_t block_scale_code(float block_amax, float global_scale) {
  if (block_amax == 0.0f) return kE4M3One;
  float s = block_amax / (6.0f * global_scale);
  if (s < kE4M3MinSubnormal) s = kE4M3MinSubnormal;  // also catches s_g = +Inf (s = 0)
  if (s > kE4M3Max) s = kE4M3Max;                    // also catches s_g = 0 (s = +Inf)
  return e4m3_encode(s);
}

// x / (s_b s_g), with ±0 kept as ±0 when the denominator is 0 (A = 0), where IEEE would give NaN.
QAD_HD uint8_t quantize_element(float x, float block_scale, float global_scale) {
  const float denom = block_scale * global_scale;
  if (x == 0.0f) return e2m1_encode(x);
  return e2m1_encode(x / denom);
}

QAD_HD float dequantize_element(uint8_t code, float block_scale, float global_scale) {
  return (e2m1_decode(code) * block_scale) * global_scale;
}

}  // namespace qad::nvfp4
