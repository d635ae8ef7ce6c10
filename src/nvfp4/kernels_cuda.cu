// CUDA kernels for NVFP4: amax, fused fake quantization, quantize (pack) and dequantize. They call the
// same scalar functions as the CPU reference (nvfp4/scales.h), so both give identical bits; the tests
// compare them byte for byte on poisoned outputs.
//
// Fast path (K a multiple of 16, 16-byte aligned rows): a group of G = sizeof(T) threads owns one
// 16-element block; each thread moves 16 contiguous bytes in and out, so a warp's loads and stores are
// fully coalesced; the block amax is reduced across the group with shuffles. Otherwise one thread owns
// one (possibly partial) block and uses scalar loads.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "nvfp4/device_math.cuh"
#include "nvfp4/dtype_dispatch.h"
#include "nvfp4/kernels.h"
#include "nvfp4/scales.h"

namespace qad::nvfp4::kernels {
namespace {

using device::Io;

constexpr int kThreads = 256;

void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

int64_t grid_for(int64_t threads) { return (threads + kThreads - 1) / kThreads; }

// ---- amax ----------------------------------------------------------------------------------------
// |x| as float bits is ordered like the value, and NaN bits sort above +Inf, so an integer max both
// finds the amax and propagates NaN.
template <typename T>
__device__ __forceinline__ uint32_t abs_bits(typename Io<T>::Raw v) {
  return __float_as_uint(Io<T>::to_float(v)) & 0x7fffffffu;
}

// Reads 16-byte vectors for the bulk (x must be 16-byte aligned) and scalars for the tail.
template <typename T>
__global__ void amax_kernel(const typename Io<T>::Raw* __restrict__ x, int64_t n, unsigned* __restrict__ out) {
  using Raw = typename Io<T>::Raw;
  constexpr int kPer = 16 / sizeof(Raw);
  unsigned best = 0;
  const int64_t nvec = n / kPer;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  for (int64_t i = tid; i < nvec; i += stride) {
    const uint4 vec = __ldg(xv + i);
    const Raw* e = reinterpret_cast<const Raw*>(&vec);
#pragma unroll
    for (int j = 0; j < kPer; ++j) best = max(best, abs_bits<T>(e[j]));
  }
  for (int64_t i = nvec * kPer + tid; i < n; i += stride) best = max(best, abs_bits<T>(x[i]));
  for (int off = 16; off > 0; off >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, off));
  __shared__ unsigned warp_best[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = best;
  __syncthreads();
  if (threadIdx.x < 32) {
    best = threadIdx.x < kThreads / 32 ? warp_best[threadIdx.x] : 0u;
    for (int off = 16; off > 0; off >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, off));
    if (threadIdx.x == 0) atomicMax(out, best);
  }
}

// Scalar fallback for unaligned inputs.
template <typename T>
__global__ void amax_scalar_kernel(const typename Io<T>::Raw* __restrict__ x, int64_t n, unsigned* __restrict__ out) {
  unsigned best = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    best = max(best, abs_bits<T>(x[i]));
  }
  for (int off = 16; off > 0; off >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, off));
  if ((threadIdx.x & 31) == 0) atomicMax(out, best);
}

// ---- one block per thread (any K, any alignment) -------------------------------------------------
template <typename T, int kMode>  // kMode: 0 fake-quantize, 1 quantize
__global__ void block_per_thread_kernel(const typename Io<T>::Raw* __restrict__ x, typename Io<T>::Raw* __restrict__ y,
                                        uint8_t* __restrict__ packed, uint8_t* __restrict__ scales,
                                        float* __restrict__ global_scale_out, int64_t rows, int64_t k,
                                        const float* __restrict__ amax) {
  const float sg = global_decode_scale(*amax);
  const int64_t nb = (k + kBlockSize - 1) / kBlockSize;
  const int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (kMode == 1 && b == 0) *global_scale_out = sg;
  if (b >= rows * nb) return;
  const int64_t r = b / nb, j = b % nb;
  const int64_t left = k - j * kBlockSize;
  const int n = left < kBlockSize ? (int)left : kBlockSize;
  const auto* xb = x + r * k + j * kBlockSize;
  float v[kBlockSize];
  float a = 0.0f;
  bool finite = true;
  for (int i = 0; i < n; ++i) {
    v[i] = Io<T>::to_float(xb[i]);
    finite = finite && is_finite(v[i]);
    a = fmaxf(a, fabsf(v[i]));
  }
  const uint8_t code = block_scale_code(a, sg);
  const float sb = e4m3_decode(code);
  if (kMode == 0) {
    auto* yb = y + r * k + j * kBlockSize;
    const bool ok = finite && is_finite(sg);
    for (int i = 0; i < n; ++i) {
      yb[i] = Io<T>::from_float(ok ? dequantize_element(quantize_element(v[i], sb, sg), sb, sg) : NAN);
    }
  } else {
    scales[b] = code;
    uint8_t* pb = packed + r * ((k + 1) / 2) + j * (kBlockSize / 2);
    for (int i = 0; i < n; i += 2) {
      uint8_t lo = quantize_element(v[i], sb, sg);
      uint8_t hi = i + 1 < n ? quantize_element(v[i + 1], sb, sg) : 0;
      pb[i / 2] = (uint8_t)(lo | (hi << 4));
    }
  }
}

// ---- fast path: K % 16 == 0, 16-byte aligned ------------------------------------------------------
template <typename T, int kMode>
__global__ void __launch_bounds__(kThreads) grouped_kernel(const typename Io<T>::Raw* __restrict__ x,
                                                           typename Io<T>::Raw* __restrict__ y,
                                                           uint8_t* __restrict__ packed, uint8_t* __restrict__ scales,
                                                           float* __restrict__ global_scale_out, int64_t nblocks,
                                                           const float* __restrict__ amax) {
  using Raw = typename Io<T>::Raw;
  constexpr int kPer = 16 / sizeof(Raw);     // elements per thread (one 16-byte vector)
  constexpr int kGroup = kBlockSize / kPer;  // threads per NVFP4 block
  const float sg = global_decode_scale(__ldg(amax));
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (kMode == 1 && t == 0) *global_scale_out = sg;
  const int64_t b = t / kGroup;
  const bool active = b < nblocks;  // inactive lanes still join the shuffles
  uint4 in_vec = make_uint4(0, 0, 0, 0), out_vec;
  if (active) in_vec = __ldg(reinterpret_cast<const uint4*>(x) + t);
  const Raw* in = reinterpret_cast<const Raw*>(&in_vec);
  Raw* out = reinterpret_cast<Raw*>(&out_vec);
  float v[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) v[i] = active ? Io<T>::to_float(in[i]) : 0.0f;
  if constexpr (kMode == 0) {
    device::fake_quantize_block<kPer, kGroup>(v, sg);  // every lane: it shuffles
    if (!active) return;
#pragma unroll
    for (int i = 0; i < kPer; i += 2) Io<T>::store2(out + i, v[i], v[i + 1]);
    reinterpret_cast<uint4*>(y)[t] = out_vec;
  } else {
    // max of |x| as integer bits; inactive lanes still join the shuffles.
    uint32_t amax_bits = 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) amax_bits = max(amax_bits, __float_as_uint(v[i]) & 0x7fffffffu);
#pragma unroll
    for (int off = 1; off < kGroup; off <<= 1) amax_bits = max(amax_bits, __shfl_xor_sync(0xffffffffu, amax_bits, off));
    if (!active) return;
    const uint8_t code = block_scale_code(__uint_as_float(amax_bits), sg);
    const float sb = e4m3_decode(code);
    if (t % kGroup == 0) scales[b] = code;
    // kPer elements -> kPer/2 packed bytes (4 for 16-bit inputs, 2 for float32).
    uint32_t word = 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) word |= (uint32_t)quantize_element(v[i], sb, sg) << (4 * i);
    if constexpr (kPer == 8) {
      reinterpret_cast<uint32_t*>(packed)[t] = word;
    } else {
      reinterpret_cast<uint16_t*>(packed)[t] = (uint16_t)word;
    }
  }
}

// ---- dequantize ----------------------------------------------------------------------------------
template <typename T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ packed, const uint8_t* __restrict__ scales,
                                  const float* __restrict__ global_scale, int64_t rows, int64_t k,
                                  typename Io<T>::Raw* __restrict__ y) {
  const int64_t nb = (k + kBlockSize - 1) / kBlockSize;
  const int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (b >= rows * nb) return;
  const float sg = *global_scale;
  const int64_t r = b / nb, j = b % nb;
  const int64_t left = k - j * kBlockSize;
  const int n = left < kBlockSize ? (int)left : kBlockSize;
  const uint8_t* pb = packed + r * ((k + 1) / 2) + j * (kBlockSize / 2);
  const float sb = e4m3_decode(scales[b]);
  auto* yb = y + r * k + j * kBlockSize;
  for (int i = 0; i < n; ++i) {
    const uint8_t q = (i & 1) ? (pb[i >> 1] >> 4) : (pb[i >> 1] & 0xF);
    yb[i] = Io<T>::from_float(dequantize_element(q, sb, sg));
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T, int kMode>
void launch_blocks(const torch::Tensor& x, torch::Tensor* y, torch::Tensor* packed, torch::Tensor* scales,
                   torch::Tensor* global_scale, const torch::Tensor& amax) {
  using Raw = typename Io<T>::Raw;
  const int64_t k = x.size(-1), rows = x.numel() / k;
  const int64_t nblocks = rows * ((k + kBlockSize - 1) / kBlockSize);
  auto stream = at::cuda::getCurrentCUDAStream();
  const Raw* xp = reinterpret_cast<const Raw*>(x.data_ptr<T>());
  Raw* yp = y ? reinterpret_cast<Raw*>(y->data_ptr<T>()) : nullptr;
  uint8_t* pp = packed ? packed->data_ptr<uint8_t>() : nullptr;
  uint8_t* sp = scales ? scales->data_ptr<uint8_t>() : nullptr;
  float* gp = global_scale ? global_scale->data_ptr<float>() : nullptr;
  const bool fast = k % kBlockSize == 0 && aligned16(xp) && (!yp || aligned16(yp)) && (!pp || aligned16(pp));
  if (nblocks == 0) return;
  if (fast) {
    constexpr int kGroup = sizeof(Raw);  // 16 elements * sizeof(Raw) / 16 bytes per thread
    grouped_kernel<T, kMode><<<grid_for(nblocks * kGroup), kThreads, 0, stream>>>(xp, yp, pp, sp, gp, nblocks,
                                                                                   amax.data_ptr<float>());
  } else {
    block_per_thread_kernel<T, kMode><<<grid_for(nblocks), kThreads, 0, stream>>>(xp, yp, pp, sp, gp, rows, k,
                                                                                   amax.data_ptr<float>());
  }
  check_launch();
}

}  // namespace

void amax_cuda(const torch::Tensor& x, torch::Tensor& out) {
  c10::cuda::CUDAGuard guard(x.device());
  out.zero_();
  const int64_t n = x.numel();
  if (n == 0) return;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t grid = std::min<int64_t>(grid_for(n), sms * 16);
  dispatch_float_types(x.scalar_type(), "nvfp4_amax_cuda", [&](auto tag) {
    using scalar_t = decltype(tag);
    auto* xp = reinterpret_cast<const typename Io<scalar_t>::Raw*>(x.data_ptr<scalar_t>());
    auto* op = reinterpret_cast<unsigned*>(out.data_ptr<float>());
    auto stream = at::cuda::getCurrentCUDAStream();
    if (aligned16(xp)) {
      amax_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(xp, n, op);
    } else {
      amax_scalar_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(xp, n, op);
    }
  });
  check_launch();
}

void fake_quantize_cuda(const torch::Tensor& x, const torch::Tensor& amax, torch::Tensor& y) {
  c10::cuda::CUDAGuard guard(x.device());
  dispatch_float_types(x.scalar_type(), "nvfp4_fake_quantize_cuda", [&](auto tag) {
    using scalar_t = decltype(tag);
    launch_blocks<scalar_t, 0>(x, &y, nullptr, nullptr, nullptr, amax);
  });
}

void quantize_cuda(const torch::Tensor& x, const torch::Tensor& amax, torch::Tensor& packed, torch::Tensor& scales,
                   torch::Tensor& global_scale) {
  c10::cuda::CUDAGuard guard(x.device());
  dispatch_float_types(x.scalar_type(), "nvfp4_quantize_cuda", [&](auto tag) {
    using scalar_t = decltype(tag);
    launch_blocks<scalar_t, 1>(x, nullptr, &packed, &scales, &global_scale, amax);
  });
}

void dequantize_cuda(const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& global_scale,
                     int64_t k, torch::Tensor& y) {
  c10::cuda::CUDAGuard guard(packed.device());
  const int64_t rows = y.numel() / k;
  const int64_t nblocks = rows * ((k + kBlockSize - 1) / kBlockSize);
  if (nblocks == 0) return;
  dispatch_float_types(y.scalar_type(), "nvfp4_dequantize_cuda", [&](auto tag) {
    using scalar_t = decltype(tag);
    dequantize_kernel<scalar_t><<<grid_for(nblocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        packed.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), global_scale.data_ptr<float>(), rows, k,
        reinterpret_cast<typename Io<scalar_t>::Raw*>(y.data_ptr<scalar_t>()));
  });
  check_launch();
}

}  // namespace qad::nvfp4::kernels
