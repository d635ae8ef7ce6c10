// Our E2M1/E4M3 encoders and decoders against CUDA's own conversions, __nv_cvt_float_to_fp4(x, __NV_E2M1,
// cudaRoundNearest) and __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3): every BF16 and FP16 bit
// pattern, and 10^7 seeded random FP32 values (random bit patterns plus values near the scales' range).
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <random>

#include "nvfp4/e2m1.h"
#include "nvfp4/e4m3.h"

namespace {
using qad::nvfp4::e2m1_decode;
using qad::nvfp4::e2m1_encode;
using qad::nvfp4::e4m3_decode;
using qad::nvfp4::e4m3_encode;

uint64_t seed() {
  const char* s = std::getenv("QAD_TEST_SEED");
  return s ? std::strtoull(s, nullptr, 10) : 20261123;
}

uint8_t cuda_fp4(float x) { return __nv_cvt_float_to_fp4(x, __NV_E2M1, cudaRoundNearest); }
uint8_t cuda_fp8(float x) { return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3); }

float bf16_bits_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }
float fp16_bits_to_float(uint16_t b) {
  __half_raw r;
  r.x = b;
  return __half2float(__half(r));
}

// Compares on one value; returns true when both codecs agree.
bool agree(float x, uint64_t& fp4_bad, uint64_t& fp8_bad, float& first_bad) {
  bool ok = true;
  if (e2m1_encode(x) != cuda_fp4(x)) ok = false, ++fp4_bad;
  if (e4m3_encode(x) != cuda_fp8(x)) ok = false, ++fp8_bad;
  if (!ok && fp4_bad + fp8_bad == 1) first_bad = x;
  return ok;
}

TEST(CodecsVsCuda, EveryBf16Pattern) {
  uint64_t fp4_bad = 0, fp8_bad = 0;
  float first = 0;
  for (uint32_t b = 0; b <= 0xFFFF; ++b) agree(bf16_bits_to_float(static_cast<uint16_t>(b)), fp4_bad, fp8_bad, first);
  EXPECT_EQ(fp4_bad, 0u) << "first mismatch at " << first;
  EXPECT_EQ(fp8_bad, 0u) << "first mismatch at " << first;
}

TEST(CodecsVsCuda, EveryBf16PatternThroughBf16Entry) {
  // CUDA's bf16 entry points, so that a difference in how it widens bf16 would show too.
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    __nv_bfloat16_raw r;
    r.x = static_cast<uint16_t>(b);
    const float x = bf16_bits_to_float(static_cast<uint16_t>(b));
    ASSERT_EQ(e2m1_encode(x), __nv_cvt_bfloat16raw_to_fp4(r, __NV_E2M1, cudaRoundNearest)) << "bf16 bits " << b;
    ASSERT_EQ(e4m3_encode(x), __nv_cvt_bfloat16raw_to_fp8(r, __NV_SATFINITE, __NV_E4M3)) << "bf16 bits " << b;
  }
}

TEST(CodecsVsCuda, EveryFp16Pattern) {
  uint64_t fp4_bad = 0, fp8_bad = 0;
  float first = 0;
  for (uint32_t b = 0; b <= 0xFFFF; ++b) agree(fp16_bits_to_float(static_cast<uint16_t>(b)), fp4_bad, fp8_bad, first);
  EXPECT_EQ(fp4_bad, 0u) << "first mismatch at " << first;
  EXPECT_EQ(fp8_bad, 0u) << "first mismatch at " << first;
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    __half_raw r;
    r.x = static_cast<uint16_t>(b);
    const float x = fp16_bits_to_float(static_cast<uint16_t>(b));
    ASSERT_EQ(e2m1_encode(x), __nv_cvt_halfraw_to_fp4(r, __NV_E2M1, cudaRoundNearest)) << "fp16 bits " << b;
    ASSERT_EQ(e4m3_encode(x), __nv_cvt_halfraw_to_fp8(r, __NV_SATFINITE, __NV_E4M3)) << "fp16 bits " << b;
  }
}

TEST(CodecsVsCuda, TenMillionRandomFp32) {
  const uint64_t s = seed();
  SCOPED_TRACE("seed " + std::to_string(s) + " (set QAD_TEST_SEED to change)");
  std::mt19937_64 rng(s);
  std::uniform_real_distribution<float> near_grid(-8.0f, 8.0f);        // E2M1's range and just past it
  std::uniform_real_distribution<float> log_mag(-14.0f, 10.0f);        // 2^-14 .. 2^10: E4M3 and past it
  uint64_t fp4_bad = 0, fp8_bad = 0;
  float first = 0;
  constexpr int kN = 10'000'000;
  for (int i = 0; i < kN; ++i) {
    float x;
    switch (i % 3) {
      case 0: x = std::bit_cast<float>(static_cast<uint32_t>(rng())); break;  // any pattern
      case 1: x = near_grid(rng); break;
      default: x = std::ldexp(1.0f, 0) * std::exp2(log_mag(rng)) * ((rng() & 1) ? -1.0f : 1.0f); break;
    }
    agree(x, fp4_bad, fp8_bad, first);
  }
  EXPECT_EQ(fp4_bad, 0u) << "first mismatch at " << first;
  EXPECT_EQ(fp8_bad, 0u) << "first mismatch at " << first;
}

TEST(CodecsVsCuda, DecodersMatchCuda) {
  for (uint32_t c = 0; c < 16; ++c) {
    const float ref = __half2float(__half(__nv_cvt_fp4_to_halfraw(static_cast<__nv_fp4_storage_t>(c), __NV_E2M1)));
    EXPECT_EQ(std::bit_cast<uint32_t>(e2m1_decode(static_cast<uint8_t>(c))), std::bit_cast<uint32_t>(ref))
        << "code " << c;
  }
  for (uint32_t c = 0; c < 256; ++c) {
    const float ref = __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(c), __NV_E4M3)));
    const float ours = e4m3_decode(static_cast<uint8_t>(c));
    if (std::isnan(ref)) {
      EXPECT_TRUE(std::isnan(ours)) << "code " << c;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(ours), std::bit_cast<uint32_t>(ref)) << "code " << c;
    }
  }
}

TEST(CodecsVsCuda, EncodeDecodeRoundTripsEveryCode) {
  for (uint32_t c = 0; c < 16; ++c) EXPECT_EQ(e2m1_encode(e2m1_decode(static_cast<uint8_t>(c))), c);
  for (uint32_t c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;  // NaN
    EXPECT_EQ(e4m3_encode(e4m3_decode(static_cast<uint8_t>(c))), c) << "code " << c;
  }
}

}  // namespace
