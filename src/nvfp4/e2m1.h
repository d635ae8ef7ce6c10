// E2M1 (FP4): 4 bits = sign<<3 | idx, magnitudes idx 0..7 = {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
// Encoding rounds to nearest, ties to even, and saturates to ±6 — the same results as CUDA's
// __nv_cvt_float_to_fp4(x, __NV_E2M1, cudaRoundNearest) for every float, which the tests check.
#pragma once
#include <cstdint>

#include "nvfp4/host_device.h"

namespace qad::nvfp4 {

constexpr float kE2M1Max = 6.0f;

QAD_HD float e2m1_decode(uint8_t code) {
  // Written as a switch rather than a table so device code needs no constant memory.
  float m = 0.0f;
  switch (code & 7u) {
    case 0: m = 0.0f; break;
    case 1: m = 0.5f; break;
    case 2: m = 1.0f; break;
    case 3: m = 1.5f; break;
    case 4: m = 2.0f; break;
    case 5: m = 3.0f; break;
    case 6: m = 4.0f; break;
    default: m = 6.0f; break;
  }
  return (code & 8u) ? -m : m;
}

// Ties go to the even code: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4; above 5 → 6.
// NaN encodes as +6 (code 7) and ±Inf as ±6, as CUDA's satfinite conversion does.
QAD_HD uint8_t e2m1_encode(float x) {
  if (x != x) return 7u;
  const uint8_t sign = (x < 0.0f || (x == 0.0f && 1.0f / x < 0.0f)) ? 8u : 0u;
  const float a = x < 0.0f ? -x : x;
  uint8_t idx;
  if (a <= 0.25f) idx = 0;
  else if (a < 0.75f) idx = 1;
  else if (a <= 1.25f) idx = 2;
  else if (a < 1.75f) idx = 3;
  else if (a <= 2.5f) idx = 4;
  else if (a < 3.5f) idx = 5;
  else if (a <= 5.0f) idx = 6;
  else idx = 7;
  return sign | idx;
}

}  // namespace qad::nvfp4
