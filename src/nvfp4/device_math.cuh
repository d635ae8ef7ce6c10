// Device-side pieces shared by the NVFP4 kernels (kernels_cuda.cu) and the fused kernels that fake-quantize
// their own outputs (src/fused): typed element loads/stores, and the fast fake quantization of one 16-element
// block held by a group of consecutive threads, which gives the bits of the reference rules in scales.h.
// CUDA only: include from .cu files.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "nvfp4/scales.h"

namespace qad::nvfp4::device {

template <typename T> struct Io;
// Loads and stores in the tensor's element type; store2 converts two values in one instruction.
template <> struct Io<float> {
  using Raw = float;
  __device__ static float to_float(float v) { return v; }
  __device__ static float from_float(float v) { return v; }
  __device__ static void store2(float* p, float a, float b) { p[0] = a, p[1] = b; }
};
template <> struct Io<at::Half> {
  using Raw = __half;
  __device__ static float to_float(__half v) { return __half2float(v); }
  __device__ static __half from_float(float v) { return __float2half_rn(v); }
  __device__ static void store2(__half* p, float a, float b) {
    *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
  }
};
template <> struct Io<at::BFloat16> {
  using Raw = __nv_bfloat16;
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  __device__ static void store2(__nv_bfloat16* p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  }
};

// The value a float takes once stored in T (round to nearest even), back as a float: what an ATen op in T
// does to its float result.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return Io<T>::to_float(Io<T>::from_float(v));
}

// E2M1 value of |x| / d, rounded to nearest even and saturated at 6, as a float. The same function as
// e2m1_decode(e2m1_encode(x / d)) for finite x and d > 0, written without branches: on [0,2) the grid
// step is 0.5, on [2,4) 1, on [4,6] 2, so scaling by 2, 1 or 1/2 makes rintf (ties to even) round onto
// it. Where the scaled ranges meet (2 and 4) both sides give the same value, so the choice is safe.
__device__ __forceinline__ float e2m1_round_magnitude(float a) {
  const float up = a < 2.0f ? 2.0f : (a < 4.0f ? 1.0f : 0.5f);
  const float down = a < 2.0f ? 0.5f : (a < 4.0f ? 1.0f : 2.0f);
  return fminf(rintf(a * up) * down, 6.0f);
}

// e2m1_round_magnitude(x / d) with x >= 0 finite, d a normal number and r = RN(1/d), bit for bit, mostly
// without a division: x * r is within 2 ulp of the IEEE quotient (the GPU test
// ReciprocalQuotientWithinTwoUlps checks this on billions of pairs), and the rounding only changes
// value at midpoints, which the scaling puts at half-integers below 4, where 2 ulp is under 2^-21. So
// unless the scaled quotient lies within 2^-18 of a half-integer, both quotients round alike; otherwise
// (about one element in 10^3 for BF16 inputs, whose values sit on a coarse lattice) divide.
__device__ __forceinline__ float e2m1_of_quotient(float x, float d, float r) {
  const float a = x * r;
  const float up = a < 2.0f ? 2.0f : (a < 4.0f ? 1.0f : 0.5f);
  const float down = a < 2.0f ? 0.5f : (a < 4.0f ? 1.0f : 2.0f);
  const float scaled = a * up;
  const float rounded = rintf(scaled);
  if (fabsf(fabsf(scaled - rounded) - 0.5f) < 0x1p-18f) return e2m1_round_magnitude(x / d);
  return fminf(rounded * down, 6.0f);
}

// Fake-quantizes, in place, the kPer values this thread holds of a 16-element block that kGroup consecutive
// lanes (aligned to kGroup) hold together; sg is the global decode scale. Every lane of the warp must call it
// (the block amax is reduced with shuffles); lanes without data pass zeros and ignore the result. Same bits as
// dequantize_element(quantize_element(...)) of scales.h, NaN for a block holding NaN or ±Inf.
template <int kPer, int kGroup>
__device__ __forceinline__ void fake_quantize_block(float (&v)[kPer], float sg) {
  // max of |x| as integer bits: the block amax and, at the same time, a finiteness test (Inf and NaN bits
  // are the largest), one integer op per element.
  uint32_t amax_bits = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) amax_bits = max(amax_bits, __float_as_uint(v[i]) & 0x7fffffffu);
#pragma unroll
  for (int off = 1; off < kGroup; off <<= 1) amax_bits = max(amax_bits, __shfl_xor_sync(0xffffffffu, amax_bits, off));
  const float a = __uint_as_float(amax_bits);
  const bool finite = amax_bits < 0x7f800000u;
  const float sb = e4m3_decode(block_scale_code(a, sg));
  const float d = sb * sg;
  const float r = 1.0f / d;
  if (finite && d >= 0x1p-100f && is_finite(r)) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) v[i] = (copysignf(e2m1_of_quotient(fabsf(v[i]), d, r), v[i]) * sb) * sg;
  } else {
    // Rare blocks (non-finite values, a zero, tiny or non-finite global scale): the reference rules.
    const bool ok = finite && is_finite(sg);
#pragma unroll
    for (int i = 0; i < kPer; ++i) v[i] = ok ? dequantize_element(quantize_element(v[i], sb, sg), sb, sg) : NAN;
  }
}

}  // namespace qad::nvfp4::device
