// CUDA kernel of the per-row softmax losses (softmax_rows.h); the reference is softmax_rows_reference in
// softmax_rows.cc. One CTA per row. Pass 1 reads the student's and the teacher's row once and keeps, per thread,
// an online (max, sum of exp) pair for each; the CTA combines them into the two log-sum-exps. Pass 2 reads the
// rows again and forms log-probabilities, the KL terms and the gradient, stored in the logits' dtype. A row of a
// 152k vocabulary is 300 KB per model, so nothing is staged in shared memory: the kernel is two reads and one
// write of BF16 logits, where the tensor-op version makes about fifteen FP32 passes.
#include <c10/cuda/CUDAGuard.h>

#include <cfloat>

#include "fused/cuda_util.cuh"
#include "loss/softmax_rows.h"
#include "nvfp4/dtype_dispatch.h"

namespace qad::loss::kernels {
namespace {

using fused::device::block_sum;
using fused::device::check_launch;
using fused::device::kPer;
using fused::device::load_vec;
using fused::device::store_vec;
using nvfp4::device::Io;

constexpr int kThreads = 512;

struct MaxSum {
  float m = -INFINITY, z = 0.0f;
  __device__ void add(float x) {
    if (x > m) {
      z = z * expf(m - x) + 1.0f;  // m = -inf: exp(-inf) = 0
      m = x;
    } else if (x == x && x != -INFINITY) {
      z += expf(x - m);
    } else if (x != x) {
      z = x;  // NaN logits make the row NaN (the step's check catches it)
    }
  }
  __device__ void merge(float m2, float z2) {
    const float mm = fmaxf(m, m2);
    if (mm == -INFINITY) return;
    z = (m == -INFINITY ? 0.0f : z * expf(m - mm)) + (m2 == -INFINITY ? 0.0f : z2 * expf(m2 - mm));
    m = mm;
  }
  __device__ float lse() const { return m + logf(z); }
};

// Combines every thread's pair; every thread gets the row's log-sum-exp.
__device__ float block_lse(MaxSum p, float2* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, p.m, off), z2 = __shfl_xor_sync(0xffffffffu, p.z, off);
    p.merge(m2, z2);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = make_float2(p.m, p.z);
  __syncthreads();
  if (warp == 0) {
    MaxSum q;
    if (lane < static_cast<int>(blockDim.x >> 5)) q = MaxSum{scratch[lane].x, scratch[lane].y};
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, q.m, off), z2 = __shfl_xor_sync(0xffffffffu, q.z, off);
      q.merge(m2, z2);
    }
    if (lane == 0) scratch[32] = make_float2(q.m, q.z);
  }
  __syncthreads();
  return MaxSum{scratch[32].x, scratch[32].y}.lse();
}

__device__ __forceinline__ float clamp_lowest(float l) { return l < -FLT_MAX ? -FLT_MAX : l; }  // NaN stays

template <typename T>
__global__ void __launch_bounds__(kThreads) softmax_rows_kernel(
    const typename Io<T>::Raw* __restrict__ student, const typename Io<T>::Raw* __restrict__ teacher,
    const int64_t* __restrict__ labels, const float* __restrict__ kl_coef, const float* __restrict__ ce_coef,
    float inv_temp, int64_t V, bool vec, float* __restrict__ kl_out, float* __restrict__ ce_out,
    typename Io<T>::Raw* __restrict__ grad) {
  __shared__ float2 scratch[33];
  __shared__ float sum_scratch[33];
  const int64_t r = blockIdx.x;
  const auto* s = student + r * V;
  const auto* t = teacher != nullptr ? teacher + r * V : nullptr;
  constexpr int P = kPer<T>;
  MaxSum ps, pt;
  if (vec) {
    for (int64_t i = threadIdx.x; i < V / P; i += blockDim.x) {
      float x[P], y[P];
      load_vec<T>(s, i, x);
#pragma unroll
      for (int j = 0; j < P; ++j) ps.add(x[j] * inv_temp);
      if (t != nullptr) {
        load_vec<T>(t, i, y);
#pragma unroll
        for (int j = 0; j < P; ++j) pt.add(y[j] * inv_temp);
      }
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      ps.add(Io<T>::to_float(s[v]) * inv_temp);
      if (t != nullptr) pt.add(Io<T>::to_float(t[v]) * inv_temp);
    }
  }
  const float lse_s = block_lse(ps, scratch);
  const float lse_t = t != nullptr ? block_lse(pt, scratch) : 0.0f;
  const int64_t label = labels != nullptr ? labels[r] : -1;
  if (label >= 0 && threadIdx.x == 0) {
    ce_out[r] = -clamp_lowest(Io<T>::to_float(s[label]) * inv_temp - lse_s);
  }
  if (t == nullptr && grad == nullptr) return;
  const float akl = grad != nullptr && t != nullptr ? kl_coef[r] : 0.0f;
  const float ace = grad != nullptr && ce_coef != nullptr ? ce_coef[r] : 0.0f;
  auto* g = grad != nullptr ? grad + r * V : nullptr;
  float kl = 0.0f;
  // One element: its KL term (accumulated) and its gradient.
  auto element = [&](int64_t v, float x, float y) {
    const float lps = clamp_lowest(x * inv_temp - lse_s), e_s = expf(lps);
    float d = 0.0f;
    if (t != nullptr) {
      const float lpt = clamp_lowest(y * inv_temp - lse_t), e_t = expf(lpt);
      kl += e_t * (lpt - lps);
      d = akl * (e_s - e_t);
    }
    if (ce_coef != nullptr) d += ace * (e_s - (v == label ? 1.0f : 0.0f));
    return d;
  };
  if (vec) {
    for (int64_t i = threadIdx.x; i < V / P; i += blockDim.x) {
      float x[P], y[P], d[P];
      load_vec<T>(s, i, x);
      if (t != nullptr) load_vec<T>(t, i, y);
#pragma unroll
      for (int j = 0; j < P; ++j) d[j] = element(i * P + j, x[j], t != nullptr ? y[j] : 0.0f);
      if (g != nullptr) store_vec<T>(g, i, d);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float d = element(v, Io<T>::to_float(s[v]), t != nullptr ? Io<T>::to_float(t[v]) : 0.0f);
      if (g != nullptr) g[v] = Io<T>::from_float(d);
    }
  }
  if (t != nullptr) {
    kl = block_sum(kl, sum_scratch);
    if (threadIdx.x == 0) kl_out[r] = kl;
  }
}

template <typename T>
const typename Io<T>::Raw* raw(const torch::Tensor& t) {
  return t.defined() ? reinterpret_cast<const typename Io<T>::Raw*>(t.data_ptr<T>()) : nullptr;
}

const float* ptr_or_null(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

}  // namespace

void softmax_rows_cuda(SoftmaxRows& a) {
  const auto& s = a.student;
  const int64_t rows = s.size(0), V = s.size(1);
  if (rows == 0 || V == 0) return;
  c10::cuda::CUDAGuard guard(s.device());
  nvfp4::dispatch_float_types(s.scalar_type(), "loss::softmax_rows_cuda", [&](auto tag) {
    using T = decltype(tag);
    // Rows start at multiples of V elements: 16-byte vectors when V is a multiple of kPer (and the base is
    // aligned, which a fresh allocation is).
    const bool vec = V % kPer<T> == 0 && reinterpret_cast<uintptr_t>(s.data_ptr()) % 16 == 0 &&
                     (!a.teacher.defined() || reinterpret_cast<uintptr_t>(a.teacher.data_ptr()) % 16 == 0) &&
                     (!a.grad.defined() || reinterpret_cast<uintptr_t>(a.grad.data_ptr()) % 16 == 0);
    auto* grad = a.grad.defined() ? reinterpret_cast<typename Io<T>::Raw*>(a.grad.data_ptr<T>()) : nullptr;
    softmax_rows_kernel<T><<<rows, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        raw<T>(s), raw<T>(a.teacher), a.labels.defined() ? a.labels.data_ptr<int64_t>() : nullptr,
        ptr_or_null(a.kl_coef), ptr_or_null(a.ce_coef), static_cast<float>(1.0 / a.temperature), V, vec,
        a.kl.defined() ? a.kl.data_ptr<float>() : nullptr, a.ce.defined() ? a.ce.data_ptr<float>() : nullptr, grad);
  });
  check_launch();
}

}  // namespace qad::loss::kernels
