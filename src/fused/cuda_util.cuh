// Device helpers of the fused kernels: 16-byte vector loads and stores of a tensor's elements as floats, and a
// deterministic sum over a CTA. CUDA only: include from .cu files.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "nvfp4/device_math.cuh"

namespace qad::fused::device {

using nvfp4::device::Io;
using nvfp4::device::round_to;

// Elements of T in one 16-byte vector, and threads per 16-element NVFP4 block when each holds one vector.
template <typename T>
constexpr int kPer = 16 / sizeof(T);
template <typename T>
constexpr int kGroup = 16 / kPer<T>;

// Loads vector `v` of `p` (16-byte aligned) as kPer floats.
template <typename T>
__device__ __forceinline__ void load_vec(const typename Io<T>::Raw* __restrict__ p, int64_t v, float (&out)[kPer<T>]) {
  using Raw = typename Io<T>::Raw;
  const uint4 bits = __ldg(reinterpret_cast<const uint4*>(p) + v);
  const Raw* e = reinterpret_cast<const Raw*>(&bits);
#pragma unroll
  for (int j = 0; j < kPer<T>; ++j) out[j] = Io<T>::to_float(e[j]);
}

// Stores kPer floats, each rounded to T, as vector `v` of `p`.
template <typename T>
__device__ __forceinline__ void store_vec(typename Io<T>::Raw* __restrict__ p, int64_t v, const float (&in)[kPer<T>]) {
  using Raw = typename Io<T>::Raw;
  uint4 bits;
  Raw* e = reinterpret_cast<Raw*>(&bits);
#pragma unroll
  for (int j = 0; j < kPer<T>; j += 2) Io<T>::store2(e + j, in[j], in[j + 1]);
  reinterpret_cast<uint4*>(p)[v] = bits;
}

// Sum of v over the CTA (blockDim.x a multiple of 32), in the same order on every call; every thread gets
// the result. `scratch` is 33 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  // Butterfly: every lane ends with the same bits.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // a previous call may still be reading scratch[32]
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
    if (lane == 0) scratch[32] = t;
  }
  __syncthreads();
  return scratch[32];
}

inline void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

}  // namespace qad::fused::device
