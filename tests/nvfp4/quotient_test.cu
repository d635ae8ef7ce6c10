// The fused CUDA kernel multiplies by the reciprocal of the block's scale and divides only near E2M1
// rounding midpoints (e2m1_of_quotient in device_math.cuh). That is exact if x * RN(1/d) is always
// within 2 ulp of the IEEE quotient x / d; this test checks that bound directly: every finite BF16
// value and 2^20 random FP32 values, over 2048 divisors shaped like s_b * s_g.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/test_util.h"

namespace {


__global__ void count_mismatches(const float* xs, int64_t nx, const float* ds, int64_t nd,
                                 unsigned long long* mismatches) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= nx) return;
  const float x = fabsf(xs[i]);
  unsigned long long bad = 0;
  for (int64_t j = 0; j < nd; ++j) {
    const float d = ds[j];
    const float q = x / d;
    // Quotients that round to zero or overflow are irrelevant to E2M1 rounding (far from every
    // midpoint); the kernel only relies on the quotient where it is a normal number.
    if (q < 0x1p-120f || q > 0x1p120f) continue;
    const int64_t ulps = (int64_t)__float_as_uint(x * (1.0f / d)) - (int64_t)__float_as_uint(q);
    if (ulps > 2 || ulps < -2) ++bad;
  }
  if (bad) atomicAdd(mismatches, bad);
}

TEST(Nvfp4Cuda, ReciprocalQuotientWithinTwoUlps) {
  QAD_REQUIRE_GPU();
  std::mt19937_64 rng(qad::testing::test_seed());
  std::vector<float> xs;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const uint32_t bf = b << 16;
    float v;
    std::memcpy(&v, &bf, 4);
    if (std::isfinite(v)) xs.push_back(v);
  }
  std::uniform_int_distribution<uint32_t> bits(0, 0x7F7FFFFF);
  for (int i = 0; i < (1 << 20); ++i) {
    const uint32_t u = bits(rng);
    float v;
    std::memcpy(&v, &u, 4);
    xs.push_back(v);
  }
  // Divisors as the kernel sees them: s_b (E4M3, 2^-9..448) times s_g (any normal scale).
  std::vector<float> ds;
  std::uniform_real_distribution<float> log_scale(-60.0f, 20.0f);
  for (int i = 0; i < 2048; ++i) {
    const float sb = std::ldexp(1.0f + (rng() % 8) / 8.0f, static_cast<int>(rng() % 15) - 6);
    ds.push_back(sb * std::exp2(log_scale(rng)));
  }
  float *dx, *dd;
  unsigned long long* dm;
  ASSERT_EQ(cudaMalloc(&dx, xs.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dd, ds.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dm, 8), cudaSuccess);
  cudaMemcpy(dx, xs.data(), xs.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dd, ds.data(), ds.size() * 4, cudaMemcpyHostToDevice);
  cudaMemset(dm, 0, 8);
  count_mismatches<<<(xs.size() + 255) / 256, 256>>>(dx, xs.size(), dd, ds.size(), dm);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  unsigned long long mismatches = 1;
  ASSERT_EQ(cudaMemcpy(&mismatches, dm, 8, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(dx);
  cudaFree(dd);
  cudaFree(dm);
  EXPECT_EQ(mismatches, 0u) << "over " << xs.size() * ds.size() << " quotients";
  std::printf("checked %zu quotients\n", xs.size() * ds.size());
}

}  // namespace
