// CUDA kernels of the CKA passes (cka_kernels.h); the references are in cka_kernels.cc.
// centre_columns: one CTA per (layer, 8 column vectors): 32 row groups of 8 threads read 16-byte vectors of rows
// g, g + 32, ...; the column sums meet in shared memory (in a fixed order), then the same threads read the rows
// again (mostly from L2) and store them centred in FP32. pair_sums: a grid-stride pass over each layer's two
// matrices with FP64 accumulators; per-CTA partial sums go to a [L, CTAs, 3] buffer that one ATen sum reduces,
// so the result does not depend on scheduling (no atomics).
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "fused/cuda_util.cuh"
#include "loss/cka_kernels.h"
#include "nvfp4/dtype_dispatch.h"

namespace qad::loss::kernels {
namespace {

using fused::device::check_launch;
using fused::device::kPer;
using fused::device::load_vec;
using fused::device::sm_count;
using nvfp4::device::Io;

constexpr int kLanes = 8;    // 16-byte column vectors per CTA
constexpr int kGroups = 32;  // row groups per CTA
constexpr int kCentreThreads = kLanes * kGroups;

// Stores P centred values (P = 4 or 8) at element `at` of an FP32 or BF16 row: 16 or 32 bytes, aligned.
template <int P>
__device__ __forceinline__ void store_centred(float* out, int64_t at, const float (&v)[P]) {
  auto* o = reinterpret_cast<float4*>(out + at);
#pragma unroll
  for (int j = 0; j < P; j += 4) o[j / 4] = make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]);
}
template <int P>
__device__ __forceinline__ void store_centred(__nv_bfloat16* out, int64_t at, const float (&v)[P]) {
#pragma unroll
  for (int j = 0; j < P; j += 2) *reinterpret_cast<__nv_bfloat162*>(out + at + j) = __floats2bfloat162_rn(v[j], v[j + 1]);
}

// Vector path: p % kPer<T> == 0, 16-byte aligned. grid (ceil(p / (kLanes * kPer)), L). O: float or __nv_bfloat16.
template <typename T, typename O>
__global__ void __launch_bounds__(kCentreThreads)
    centre_columns_kernel(const typename Io<T>::Raw* __restrict__ x, O* __restrict__ centred,
                          float* __restrict__ mean, int64_t n, int64_t p) {
  constexpr int P = kPer<T>;
  __shared__ float partial[kGroups][kLanes * P];
  __shared__ float col_mean[kLanes * P];
  const int lane = threadIdx.x % kLanes, group = threadIdx.x / kLanes;
  const int64_t layer = blockIdx.y, vcol = static_cast<int64_t>(blockIdx.x) * kLanes + lane;
  const bool active = vcol * P < p;
  const auto* xl = x + layer * n * p;
  float acc[P];
#pragma unroll
  for (int j = 0; j < P; ++j) acc[j] = 0.0f;
  if (active) {
    for (int64_t i = group; i < n; i += kGroups) {
      float v[P];
      load_vec<T>(xl + i * p, vcol, v);
#pragma unroll
      for (int j = 0; j < P; ++j) acc[j] += v[j];
    }
  }
#pragma unroll
  for (int j = 0; j < P; ++j) partial[group][lane * P + j] = acc[j];
  __syncthreads();
  if (threadIdx.x < kLanes * P) {
    float s = 0.0f;
    for (int g = 0; g < kGroups; ++g) s += partial[g][threadIdx.x];
    const float m = s / static_cast<float>(n);
    col_mean[threadIdx.x] = m;
    const int64_t col = static_cast<int64_t>(blockIdx.x) * kLanes * P + threadIdx.x;
    if (col < p) mean[layer * p + col] = m;
  }
  __syncthreads();
  if (!active) return;
  float m[P];
#pragma unroll
  for (int j = 0; j < P; ++j) m[j] = col_mean[lane * P + j];
  O* cl = centred + layer * n * p;
  for (int64_t i = group; i < n; i += kGroups) {
    float v[P];
    load_vec<T>(xl + i * p, vcol, v);
#pragma unroll
    for (int j = 0; j < P; ++j) v[j] -= m[j];
    store_centred<P>(cl, i * p + vcol * P, v);
  }
}

__device__ __forceinline__ void store_one(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_one(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Any width or alignment: one thread per column (slow; hidden sizes are multiples of 8, so training never
// takes it). grid (ceil(p / 256), L).
template <typename T, typename O>
__global__ void centre_columns_scalar_kernel(const typename Io<T>::Raw* __restrict__ x, O* __restrict__ centred,
                                             float* __restrict__ mean, int64_t n, int64_t p) {
  const int64_t layer = blockIdx.y, col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p) return;
  const auto* xl = x + layer * n * p;
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += Io<T>::to_float(xl[i * p + col]);
  const float m = s / static_cast<float>(n);
  mean[layer * p + col] = m;
  for (int64_t i = 0; i < n; ++i) store_one(centred + (layer * n + i) * p + col, Io<T>::to_float(xl[i * p + col]) - m);
}

constexpr int kSumThreads = 256;

__device__ __forceinline__ void add_products(float a, float b, double& ab, double& aa, double& bb) {
  // __fmul_rn: the product is rounded to float as the tensor ops round it (no contraction into the FP64 add).
  ab += static_cast<double>(__fmul_rn(a, b));
  aa += static_cast<double>(__fmul_rn(a, a));
  bb += static_cast<double>(__fmul_rn(b, b));
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// grid (ctas, L); partial [L, ctas, 3].
__global__ void __launch_bounds__(kSumThreads)
    pair_sums_kernel(const float* __restrict__ a, const float* __restrict__ b, int64_t m, bool vec,
                     double* __restrict__ partial) {
  const int64_t layer = blockIdx.y;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float* al = a + layer * m;
  const float* bl = b + layer * m;
  double ab = 0, aa = 0, bb = 0;
  if (vec) {
    const auto* a4 = reinterpret_cast<const float4*>(al);
    const auto* b4 = reinterpret_cast<const float4*>(bl);
    for (int64_t v = first; v < m / 4; v += stride) {
      const float4 x = __ldg(a4 + v), y = __ldg(b4 + v);
      add_products(x.x, y.x, ab, aa, bb);
      add_products(x.y, y.y, ab, aa, bb);
      add_products(x.z, y.z, ab, aa, bb);
      add_products(x.w, y.w, ab, aa, bb);
    }
  } else {
    for (int64_t i = first; i < m; i += stride) add_products(__ldg(al + i), __ldg(bl + i), ab, aa, bb);
  }
  __shared__ double scratch[3][kSumThreads / 32];
  ab = warp_sum(ab), aa = warp_sum(aa), bb = warp_sum(bb);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[0][warp] = ab, scratch[1][warp] = aa, scratch[2][warp] = bb;
  __syncthreads();
  if (threadIdx.x < 3) {
    double s = 0;
    for (int w = 0; w < kSumThreads / 32; ++w) s += scratch[threadIdx.x][w];
    partial[(layer * gridDim.x + blockIdx.x) * 3 + threadIdx.x] = s;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void centre_columns_cuda(CentreColumns& a) {
  const auto& x = a.x;
  const int64_t L = x.size(0), n = x.size(1), p = x.size(2);
  if (L == 0 || p == 0) return;
  c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  nvfp4::dispatch_float_types(x.scalar_type(), "loss::centre_columns_cuda", [&](auto tag) {
    using T = decltype(tag);
    const auto* xs = reinterpret_cast<const typename Io<T>::Raw*>(x.data_ptr<T>());
    float* ms = a.mean.data_ptr<float>();
    auto launch = [&](auto* cs) {
      // A BF16 output vector of 8 elements is 16 bytes, an FP32 one of 4 or 8 elements 16 or 32 bytes.
      if (p % kPer<T> == 0 && aligned16(xs) && aligned16(cs)) {
        const dim3 grid(static_cast<unsigned>((p / kPer<T> + kLanes - 1) / kLanes), static_cast<unsigned>(L));
        centre_columns_kernel<T><<<grid, kCentreThreads, 0, stream>>>(xs, cs, ms, n, p);
      } else {
        const dim3 grid(static_cast<unsigned>((p + 255) / 256), static_cast<unsigned>(L));
        centre_columns_scalar_kernel<T><<<grid, 256, 0, stream>>>(xs, cs, ms, n, p);
      }
    };
    if (a.centred.scalar_type() == torch::kBFloat16) {
      launch(reinterpret_cast<__nv_bfloat16*>(a.centred.data_ptr<at::BFloat16>()));
    } else {
      launch(a.centred.data_ptr<float>());
    }
  });
  check_launch();
}

void pair_sums_cuda(PairSums& s) {
  const int64_t L = s.a.size(0), m = s.a.size(1) * s.a.size(2);
  if (L == 0) return;
  if (m == 0) {
    s.out.zero_();
    return;
  }
  c10::cuda::CUDAGuard guard(s.a.device());
  const float* as = s.a.data_ptr<float>();
  const float* bs = s.b.data_ptr<float>();
  const bool vec = m % 4 == 0 && aligned16(as) && aligned16(bs);
  // About four CTAs per SM over all layers, and no more than the work needs.
  const int64_t work = ((vec ? m / 4 : m) + kSumThreads - 1) / kSumThreads;
  const int64_t ctas = std::max<int64_t>(1, std::min<int64_t>(work, (4 * sm_count() + L - 1) / L));
  auto partial = torch::empty({L, ctas, 3}, s.out.options());
  pair_sums_kernel<<<dim3(static_cast<unsigned>(ctas), static_cast<unsigned>(L)), kSumThreads, 0,
                     at::cuda::getCurrentCUDAStream()>>>(as, bs, m, vec, partial.data_ptr<double>());
  check_launch();
  s.out.copy_(partial.sum(1));
}

}  // namespace qad::loss::kernels
