// CUDA kernels of the CKA passes (cka_kernels.h); the references are in cka_kernels.cc.
// centre_columns: one CTA per (layer, 8 column vectors): 32 row groups of 8 threads read 16-byte vectors of rows
// g, g + 32, ...; the column sums meet in shared memory (in a fixed order), then the same threads read the rows
// again (mostly from L2) and store them centred in FP32. pair_sums: a grid-stride pass over each layer's two
// matrices with FP64 accumulators; per-CTA partial sums go to a [L, CTAs, 3] buffer that one ATen sum reduces,
// so the result does not depend on scheduling (no atomics). centred_gram_sums: a warp per row (grid-stride over
// rows), FP64 accumulators for the three dot products and the row's two sums; the row sums and per-CTA partials go
// to buffers that a second kernel (a CTA per layer) reduces in a fixed order: deterministic, no atomics.
// combine_kernels: a CTA per row, four FP32 pairs in, four BF16 out per step, and with the correction column the
// row's sum in double. append_column_means: the column sums in double, as centre_columns sums (a CTA per layer and
// 64 columns).
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

constexpr int kRowWarps = 8;  // rows in flight per CTA of centred_gram_sums
constexpr int kRowThreads = kRowWarps * 32;

// One row of K and L: its two sums (returned through the warp) and the three products (per thread).
__device__ __forceinline__ void add_row_element(float k, float l, double& kl, double& kk, double& ll, double& rk,
                                                double& rl) {
  const double a = k, b = l;  // float * float is exact in double
  kl += a * b, kk += a * a, ll += b * b, rk += a, rl += b;
}

// grid (ctas, L): warp w of CTA c takes rows c * kRowWarps + w, then every gridDim.x * kRowWarps-th. Writes
// row_sums [L, 2, n] (K's, then L's) and partial [L, ctas, 3].
__global__ void __launch_bounds__(kRowThreads)
    gram_rows_kernel(const float* __restrict__ k, const float* __restrict__ l, int64_t n, bool vec,
                     double* __restrict__ row_sums, double* __restrict__ partial) {
  const int64_t layer = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float* kl_ = k + layer * n * n;
  const float* ll_ = l + layer * n * n;
  double kl = 0, kk = 0, ll = 0;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + warp; row < n;
       row += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    double rk = 0, rl = 0;
    const float* kr = kl_ + row * n;
    const float* lr = ll_ + row * n;
    if (vec) {
      const auto* k4 = reinterpret_cast<const float4*>(kr);
      const auto* l4 = reinterpret_cast<const float4*>(lr);
      for (int64_t v = lane; v < n / 4; v += 32) {
        const float4 a = __ldg(k4 + v), b = __ldg(l4 + v);
        add_row_element(a.x, b.x, kl, kk, ll, rk, rl);
        add_row_element(a.y, b.y, kl, kk, ll, rk, rl);
        add_row_element(a.z, b.z, kl, kk, ll, rk, rl);
        add_row_element(a.w, b.w, kl, kk, ll, rk, rl);
      }
    } else {
      for (int64_t j = lane; j < n; j += 32) add_row_element(__ldg(kr + j), __ldg(lr + j), kl, kk, ll, rk, rl);
    }
    rk = warp_sum(rk), rl = warp_sum(rl);
    if (lane == 0) {
      row_sums[(layer * 2) * n + row] = rk;
      row_sums[(layer * 2 + 1) * n + row] = rl;
    }
  }
  __shared__ double scratch[3][kRowWarps];
  kl = warp_sum(kl), kk = warp_sum(kk), ll = warp_sum(ll);
  if (lane == 0) scratch[0][warp] = kl, scratch[1][warp] = kk, scratch[2][warp] = ll;
  __syncthreads();
  if (threadIdx.x < 3) {
    double s = 0;
    for (int w = 0; w < kRowWarps; ++w) s += scratch[threadIdx.x][w];
    partial[(layer * gridDim.x + blockIdx.x) * 3 + threadIdx.x] = s;
  }
}

constexpr int kFinishThreads = 256;

// grid (L): the centred sums from the partials and the row sums, and the means, all in a fixed order.
__global__ void __launch_bounds__(kFinishThreads)
    gram_finish_kernel(const double* __restrict__ row_sums, const double* __restrict__ partial, int64_t n, int ctas,
                       double* __restrict__ sums, float* __restrict__ k_row_means, float* __restrict__ l_row_means,
                       float* __restrict__ k_mean, float* __restrict__ l_mean, double* __restrict__ cka,
                       float* __restrict__ cka_float) {
  const int64_t layer = blockIdx.x;
  const double dn = static_cast<double>(n);
  const double* rk = row_sums + layer * 2 * n;
  const double* rl = rk + n;
  double v[5] = {0, 0, 0, 0, 0};  // <rk,rl>, <rk,rk>, <rl,rl>, sum rk, sum rl
  for (int64_t i = threadIdx.x; i < n; i += kFinishThreads) {
    const double a = rk[i], b = rl[i];
    v[0] += a * b, v[1] += a * a, v[2] += b * b, v[3] += a, v[4] += b;
    k_row_means[layer * n + i] = static_cast<float>(a / dn);
    l_row_means[layer * n + i] = static_cast<float>(b / dn);
  }
  __shared__ double scratch[5][kFinishThreads / 32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < 5; ++j) {
    v[j] = warp_sum(v[j]);
    if (lane == 0) scratch[j][warp] = v[j];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double t[5];
    for (int j = 0; j < 5; ++j) {
      t[j] = 0;
      for (int w = 0; w < kFinishThreads / 32; ++w) t[j] += scratch[j][w];
    }
    double raw[3] = {0, 0, 0};  // <K,L>, <K,K>, <L,L>
    for (int c = 0; c < ctas; ++c) {
      for (int j = 0; j < 3; ++j) raw[j] += partial[(layer * ctas + c) * 3 + j];
    }
    const double n2 = dn * dn;
    double c[3];
    c[0] = raw[0] - 2.0 / dn * t[0] + t[3] * t[4] / n2;
    c[1] = raw[1] - 2.0 / dn * t[1] + t[3] * t[3] / n2;
    c[2] = raw[2] - 2.0 / dn * t[2] + t[4] * t[4] / n2;
    for (int j = 0; j < 3; ++j) sums[layer * 3 + j] = c[j];
    k_mean[layer] = static_cast<float>(t[3] / n2);
    l_mean[layer] = static_cast<float>(t[4] / n2);
    if (cka != nullptr) {
      // sums[0] / sqrt(sums[1] * sums[2]), each operation rounded once (what the tensor ops give).
      const double value = __ddiv_rn(c[0], __dsqrt_rn(__dmul_rn(c[1], c[2])));
      cka[layer] = value;
      cka_float[layer] = __double2float_rn(value);
    }
  }
}

// One thread per layer: the backward's factors (BackwardFactors in cka_kernels.h), each double operation rounded
// once in the tensor ops' order.
__global__ void backward_factors_kernel(const double* __restrict__ cka, const double* __restrict__ f_own,
                                        const double* __restrict__ fxx, const double* __restrict__ fyy,
                                        const void* __restrict__ go, bool go_double, int64_t L, int64_t s_cka,
                                        int64_t s_own, int64_t s_xx, int64_t s_yy, int64_t s_go,
                                        float* __restrict__ beta, float* __restrict__ alpha) {
  const int64_t l = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (l >= L) return;
  const double g = go_double ? static_cast<const double*>(go)[l * s_go]
                             : static_cast<double>(static_cast<const float*>(go)[l * s_go]);
  beta[l] = __double2float_rn(__dmul_rn(__ddiv_rn(__dmul_rn(-2.0, cka[l * s_cka]), f_own[l * s_own]), g));
  const double root = __dsqrt_rn(__dmul_rn(fxx[l * s_xx], fyy[l * s_yy]));
  alpha[l] = __double2float_rn(__dmul_rn(__ddiv_rn(2.0, root), g));
}

constexpr int kCombineThreads = 256;

// The centred kernel's element and its share of the combination, each operation rounded to float (no contraction).
__device__ __forceinline__ float centred_element(float k, float row_i, float row_j, float mean) {
  return __fadd_rn(__fsub_rn(__fsub_rn(k, row_i), row_j), mean);
}
__device__ __forceinline__ float combine_one(float own, float other, float beta, float alpha) {
  return __fadd_rn(__fmul_rn(own, beta), __fmul_rn(other, alpha));
}

struct KernelSide {
  const float* gram;       // [L, n, n]
  const float* row_means;  // [L, n]
  const float* mean;       // [L]
};

// One CTA per row of one layer: grid (n, L). vec: n % 4 == 0, cols % 4 == 0 and 16-byte aligned inputs (four
// elements of one row per step; the BF16 output is then 8-byte aligned per vector). With cols > n the CTA also sums
// its row's rounded values in double (exact, so the order does not matter) for the correction column.
__global__ void __launch_bounds__(kCombineThreads)
    combine_kernels_kernel(KernelSide own, KernelSide other, const float* __restrict__ beta,
                           const float* __restrict__ alpha, __nv_bfloat16* __restrict__ out, int64_t n, int64_t cols,
                           bool vec) {
  const int64_t layer = blockIdx.y, i = blockIdx.x, m = n * n;
  const float b = beta[layer], a = alpha[layer];
  const float om = own.mean[layer], tm = other.mean[layer];
  const float* ol = own.gram + layer * m + i * n;
  const float* tl = other.gram + layer * m + i * n;
  const float* orow = own.row_means + layer * n;
  const float* trow = other.row_means + layer * n;
  const float oi = __ldg(orow + i), ti = __ldg(trow + i);
  __nv_bfloat16* rl = out + (layer * n + i) * cols;
  const bool correct = cols > n;
  double sum = 0.0;
  if (vec) {
    const auto* o4 = reinterpret_cast<const float4*>(ol);
    const auto* t4 = reinterpret_cast<const float4*>(tl);
    auto* r2 = reinterpret_cast<__nv_bfloat162*>(rl);
    for (int64_t v = threadIdx.x; v < n / 4; v += blockDim.x) {
      const int64_t j = 4 * v;
      const float4 x = __ldg(o4 + v), y = __ldg(t4 + v);
      const float4 oj = __ldg(reinterpret_cast<const float4*>(orow + j));
      const float4 tj = __ldg(reinterpret_cast<const float4*>(trow + j));
      const float e0 = combine_one(centred_element(x.x, oi, oj.x, om), centred_element(y.x, ti, tj.x, tm), b, a);
      const float e1 = combine_one(centred_element(x.y, oi, oj.y, om), centred_element(y.y, ti, tj.y, tm), b, a);
      const float e2 = combine_one(centred_element(x.z, oi, oj.z, om), centred_element(y.z, ti, tj.z, tm), b, a);
      const float e3 = combine_one(centred_element(x.w, oi, oj.w, om), centred_element(y.w, ti, tj.w, tm), b, a);
      const __nv_bfloat162 lo = __floats2bfloat162_rn(e0, e1), hi = __floats2bfloat162_rn(e2, e3);
      r2[2 * v] = lo;
      r2[2 * v + 1] = hi;
      if (correct) {
        const float2 fl = __bfloat1622float2(lo), fh = __bfloat1622float2(hi);
        sum += (static_cast<double>(fl.x) + static_cast<double>(fl.y)) +
               (static_cast<double>(fh.x) + static_cast<double>(fh.y));
      }
    }
  } else {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float kc = centred_element(__ldg(ol + j), oi, __ldg(orow + j), om);
      const float lc = centred_element(__ldg(tl + j), ti, __ldg(trow + j), tm);
      const __nv_bfloat16 r = __float2bfloat16_rn(combine_one(kc, lc, b, a));
      rl[j] = r;
      if (correct) sum += static_cast<double>(__bfloat162float(r));
    }
  }
  if (!correct) return;
  __shared__ double warp_sums[kCombineThreads / 32];
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kCombineThreads / 32; ++w) total += warp_sums[w];
    rl[n] = __float2bfloat16_rn(static_cast<float>(-total));
  }
  for (int64_t j = n + 1 + threadIdx.x; j < cols; j += blockDim.x) rl[j] = __float2bfloat16_rn(0.0f);
}

constexpr int kMeanLanes = 8;    // 16-byte column vectors (8 BF16 columns each) per CTA
constexpr int kMeanGroups = 32;  // row groups per CTA

// append_column_means, vector path (p % 8 == 0, 16-byte aligned rows): grid (ceil(p / 64), L); 32 row groups of 8
// threads sum 16-byte vectors in double; the groups meet in shared memory. Scalar path: one thread per column.
__global__ void __launch_bounds__(kMeanLanes * kMeanGroups)
    append_column_means_kernel(__nv_bfloat16* __restrict__ rows, int64_t layer_stride, int64_t n, int64_t extra,
                               int64_t p) {
  __shared__ double partial[kMeanGroups][kMeanLanes * 8];
  const int lane = threadIdx.x % kMeanLanes, group = threadIdx.x / kMeanLanes;
  const int64_t vcol = static_cast<int64_t>(blockIdx.x) * kMeanLanes + lane;
  __nv_bfloat16* rl = rows + blockIdx.y * layer_stride;
  double acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0.0;
  if (vcol * 8 < p) {
    for (int64_t i = group; i < n; i += kMeanGroups) {
      const uint4 bits = __ldg(reinterpret_cast<const uint4*>(rl + i * p) + vcol);
      const auto* e = reinterpret_cast<const __nv_bfloat16*>(&bits);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(__bfloat162float(e[j]));
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) partial[group][lane * 8 + j] = acc[j];
  __syncthreads();
  for (int c = threadIdx.x; c < kMeanLanes * 8; c += blockDim.x) {
    const int64_t col = static_cast<int64_t>(blockIdx.x) * kMeanLanes * 8 + c;
    if (col >= p) continue;
    double s = 0.0;
    for (int g = 0; g < kMeanGroups; ++g) s += partial[g][c];
    rl[n * p + col] = __float2bfloat16_rn(static_cast<float>(s / static_cast<double>(n)));
    for (int64_t r = 1; r < extra; ++r) rl[(n + r) * p + col] = __float2bfloat16_rn(0.0f);
  }
}

__global__ void append_column_means_scalar_kernel(__nv_bfloat16* __restrict__ rows, int64_t layer_stride, int64_t n,
                                                  int64_t extra, int64_t p) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p) return;
  __nv_bfloat16* rl = rows + blockIdx.y * layer_stride;
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(__bfloat162float(rl[i * p + col]));
  rl[n * p + col] = __float2bfloat16_rn(static_cast<float>(s / static_cast<double>(n)));
  for (int64_t r = 1; r < extra; ++r) rl[(n + r) * p + col] = __float2bfloat16_rn(0.0f);
}

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

void centred_gram_sums_cuda(GramSums& g) {
  const int64_t L = g.k.size(0), n = g.k.size(1);
  if (L == 0) return;
  c10::cuda::CUDAGuard guard(g.k.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const float* ks = g.k.data_ptr<float>();
  const float* ls = g.l.data_ptr<float>();
  const bool vec = n % 4 == 0 && aligned16(ks) && aligned16(ls);
  // About four CTAs per SM over all layers, and no more than there are rows for.
  const int64_t ctas = std::max<int64_t>(
      1, std::min<int64_t>((n + kRowWarps - 1) / kRowWarps, (4 * sm_count() + L - 1) / L));
  auto f64 = g.sums.options();
  auto row_sums = torch::empty({L, 2, n}, f64);
  auto partial = torch::empty({L, ctas, 3}, f64);
  gram_rows_kernel<<<dim3(static_cast<unsigned>(ctas), static_cast<unsigned>(L)), kRowThreads, 0, stream>>>(
      ks, ls, n, vec, row_sums.data_ptr<double>(), partial.data_ptr<double>());
  check_launch();
  gram_finish_kernel<<<static_cast<unsigned>(L), kFinishThreads, 0, stream>>>(
      row_sums.data_ptr<double>(), partial.data_ptr<double>(), n, static_cast<int>(ctas), g.sums.data_ptr<double>(),
      g.k_row_means.data_ptr<float>(), g.l_row_means.data_ptr<float>(), g.k_mean.data_ptr<float>(),
      g.l_mean.data_ptr<float>(), g.cka.defined() ? g.cka.data_ptr<double>() : nullptr,
      g.cka.defined() ? g.cka_float.data_ptr<float>() : nullptr);
  check_launch();
}

void backward_factors_cuda(BackwardFactors& b) {
  const int64_t L = b.cka.size(0);
  if (L == 0) return;
  c10::cuda::CUDAGuard guard(b.cka.device());
  const bool go_double = b.go.scalar_type() == torch::kFloat64;
  constexpr int kThreads = 128;
  backward_factors_kernel<<<static_cast<unsigned>((L + kThreads - 1) / kThreads), kThreads, 0,
                            at::cuda::getCurrentCUDAStream()>>>(
      b.cka.data_ptr<double>(), b.f_own.data_ptr<double>(), b.fxx.data_ptr<double>(), b.fyy.data_ptr<double>(),
      b.go.data_ptr(), go_double, L, b.cka.stride(0), b.f_own.stride(0), b.fxx.stride(0), b.fyy.stride(0),
      b.go.stride(0), b.beta.data_ptr<float>(), b.alpha.data_ptr<float>());
  check_launch();
}

void combine_kernels_cuda(CombineKernels& c) {
  const int64_t L = c.own.gram.size(0), n = c.own.gram.size(1), cols = c.out.size(2);
  if (L == 0 || n == 0) return;
  c10::cuda::CUDAGuard guard(c.own.gram.device());
  auto side = [](const GramKernel& k) {
    return KernelSide{k.gram.data_ptr<float>(), k.row_means.data_ptr<float>(), k.mean.data_ptr<float>()};
  };
  const KernelSide own = side(c.own), other = side(c.other);
  auto* rs = reinterpret_cast<__nv_bfloat16*>(c.out.data_ptr<at::BFloat16>());
  const bool vec = n % 4 == 0 && cols % 4 == 0 && aligned16(own.gram) && aligned16(other.gram) &&
                   aligned16(own.row_means) && aligned16(other.row_means) && reinterpret_cast<uintptr_t>(rs) % 8 == 0;
  combine_kernels_kernel<<<dim3(static_cast<unsigned>(n), static_cast<unsigned>(L)), kCombineThreads, 0,
                           at::cuda::getCurrentCUDAStream()>>>(own, other, c.beta.data_ptr<float>(),
                                                              c.alpha.data_ptr<float>(), rs, n, cols, vec);
  check_launch();
}

void append_column_means_cuda(AppendColumnMeans& a) {
  const int64_t L = a.rows.size(0), extra = a.rows.size(1) - a.n, p = a.rows.size(2);
  if (L == 0) return;
  c10::cuda::CUDAGuard guard(a.rows.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto* rs = reinterpret_cast<__nv_bfloat16*>(a.rows.data_ptr<at::BFloat16>());
  const int64_t stride = a.rows.stride(0);
  if (p % 8 == 0 && stride % 8 == 0 && aligned16(rs)) {
    const dim3 grid(static_cast<unsigned>((p / 8 + kMeanLanes - 1) / kMeanLanes), static_cast<unsigned>(L));
    append_column_means_kernel<<<grid, kMeanLanes * kMeanGroups, 0, stream>>>(rs, stride, a.n, extra, p);
  } else {
    const dim3 grid(static_cast<unsigned>((p + 255) / 256), static_cast<unsigned>(L));
    append_column_means_scalar_kernel<<<grid, 256, 0, stream>>>(rs, stride, a.n, extra, p);
  }
  check_launch();
}

}  // namespace qad::loss::kernels
