// E4M3 "fn" (FP8): sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; 0x7F/0xFF are NaN;
// max finite 448; subnormals down to 2^-9. Encoding rounds to nearest even and saturates to ±448, as
// CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) does; the tests compare every case.
#pragma once
#include <cmath>
#include <cstdint>

#include "nvfp4/host_device.h"

namespace qad::nvfp4 {

constexpr float kE4M3Max = 448.0f;
constexpr float kE4M3MinSubnormal = 0.001953125f;  // 2^-9

QAD_HD float e4m3_decode(uint8_t code) {
  const uint32_t exp = (code >> 3) & 0xFu;
  const uint32_t man = code & 0x7u;
  float v;
  if (exp == 0xFu && man == 0x7u) {
    v = NAN;
  } else if (exp == 0) {
    v = static_cast<float>(man) * kE4M3MinSubnormal;  // man/8 * 2^-6
  } else {
    v = ldexpf(1.0f + static_cast<float>(man) * 0.125f, static_cast<int>(exp) - 7);
  }
  return (code & 0x80u) ? -v : v;
}

QAD_HD uint8_t e4m3_encode(float x) {
  if (x != x) return 0x7Fu;  // NaN, whatever its sign, as CUDA returns it
  const uint8_t sign = (x < 0.0f || (x == 0.0f && 1.0f / x < 0.0f)) ? 0x80u : 0u;
  const float a = x < 0.0f ? -x : x;
  if (a >= kE4M3Max) return sign | 0x7Eu;  // saturate (also ±Inf)
  if (a < 0.015625f) {
    // Subnormal range (below 2^-6): a multiple of 2^-9; a*512 is exact, rintf rounds to even.
    // A result of 8 is the smallest normal, whose code is also 8.
    return sign | static_cast<uint8_t>(rintf(a * 512.0f));
  }
  int e;
  const float m = frexpf(a, &e);  // a = m * 2^e, m in [0.5, 1)
  // Mantissa steps of 1/8 of the leading power of two: (2m - 1) * 8 = 16m - 8, exact in float.
  uint32_t man = static_cast<uint32_t>(rintf(m * 16.0f - 8.0f));
  int biased = e - 1 + 7;
  if (man == 8) {
    man = 0;
    ++biased;
  }
  const uint32_t code = (static_cast<uint32_t>(biased) << 3) | man;
  return sign | static_cast<uint8_t>(code > 0x7Eu ? 0x7Eu : code);
}

}  // namespace qad::nvfp4
