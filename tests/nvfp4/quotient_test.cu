// The fused CUDA kernel divides by the block's scale through a reciprocal and one FMA correction
// (ieee_quotient in kernels_cuda.cu). Its exactness rests on a theorem; this test checks it against
// IEEE division directly: every finite BF16 and FP16 value, plus random FP32 values, over many divisors.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/test_util.h"

namespace {

__device__ __forceinline__ float ieee_quotient(float x, float d, float r) {
  const float q0 = x * r;
  const float rem = fmaf(-q0, d, x);
  return fmaf(rem, r, q0);
}

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
    if (__float_as_uint(ieee_quotient(x, d, 1.0f / d)) != __float_as_uint(q)) ++bad;
  }
  if (bad) atomicAdd(mismatches, bad);
}

TEST(Nvfp4Cuda, QuotientMatchesIeeeDivision) {
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
