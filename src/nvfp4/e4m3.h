// E4M3 "fn" (FP8): sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; 0x7F/0xFF are NaN;
// max finite 448; subnormals down to 2^-9. Encoding rounds to nearest even and saturates to ±448, as
// CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) does; the tests compare every case.
// Written with float bit arithmetic (no libm), so that it is cheap inside the CUDA kernels too.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "nvfp4/host_device.h"

namespace qad::nvfp4 {

constexpr float kE4M3Max = 448.0f;
constexpr float kE4M3MinSubnormal = 0.001953125f;  // 2^-9
constexpr float kE4M3MinNormal = 0.015625f;        // 2^-6

QAD_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

QAD_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

QAD_HD float e4m3_decode(uint8_t code) {
  const uint32_t exp = (code >> 3) & 0xFu;
  const uint32_t man = code & 0x7u;
  float v;
  if (exp == 0xFu && man == 0x7u) {
    v = NAN;
  } else if (exp == 0) {
    v = static_cast<float>(man) * kE4M3MinSubnormal;  // man/8 * 2^-6, exact
  } else {
    v = bits_float(((exp + 120u) << 23) | (man << 20));  // rebias 7 -> 127
  }
  return (code & 0x80u) ? -v : v;
}

QAD_HD uint8_t e4m3_encode(float x) {
  if (x != x) return 0x7Fu;  // NaN, whatever its sign, as CUDA returns it
  const uint32_t u = float_bits(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const float a = bits_float(u & 0x7FFFFFFFu);
  if (a >= kE4M3Max) return sign | 0x7Eu;  // saturate (also ±Inf)
  if (a < kE4M3MinNormal) {
    // Subnormal range: a multiple of 2^-9; a*512 is exact and rintf rounds to even. A result of 8 is
    // the smallest normal, whose code is also 8.
    return sign | static_cast<uint8_t>(rintf(a * 512.0f));
  }
  // Round the 23-bit mantissa to 3 bits, ties to even; a carry moves into the exponent as it should.
  const uint32_t ua = float_bits(a);
  const uint32_t rounded = ua + 0x7FFFFu + ((ua >> 20) & 1u);
  const uint32_t code = (rounded >> 20) - (120u << 3);  // rebias 127 -> 7
  return sign | static_cast<uint8_t>(code > 0x7Eu ? 0x7Eu : code);
}

}  // namespace qad::nvfp4
