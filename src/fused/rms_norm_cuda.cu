// CUDA kernels of the fused RMSNorm (+ residual add, + NVFP4 fake quantization of the output) and its
// backward; the reference is rms_norm_cpu.cc. Forward: one CTA per row, each thread holds kVecs 16-byte
// vectors of the row in registers; the sum of squares is one deterministic CTA reduction; a 16-element
// NVFP4 block is held by kGroup neighbouring lanes, which reduce its amax with shuffles. Backward: a grid of up
// to 8 CTAs per SM walks the rows; the weight gradient is accumulated per thread (it owns fixed columns)
// and written as one partial row per CTA, summed afterwards.
#include <c10/cuda/CUDAGuard.h>

#include "fused/cuda_util.cuh"
#include "fused/kernels.h"
#include "fused/row_math.h"
#include "nvfp4/dtype_dispatch.h"

namespace qad::fused::kernels {
namespace {

using namespace device;

template <typename T, int kVecs>
__global__ void rms_norm_forward_kernel(const typename Io<T>::Raw* __restrict__ x,
                                        const typename Io<T>::Raw* __restrict__ residual,
                                        const typename Io<T>::Raw* __restrict__ w, typename Io<T>::Raw* __restrict__ y,
                                        typename Io<T>::Raw* __restrict__ h_out, float* __restrict__ rstd, int64_t k,
                                        float eps, const float* __restrict__ amax) {
  constexpr int P = kPer<T>;
  __shared__ float scratch[33];
  const int64_t row = blockIdx.x;
  const int64_t nvec = k / P, first = row * nvec;  // vector index of the row's start
  float h[kVecs][P];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t v = i * (int64_t)blockDim.x + threadIdx.x;
    if (v < nvec) {
      load_vec<T>(x, first + v, h[i]);
      if (residual != nullptr) {  // h = x + residual, rounded to T as the unfused add stores it
        float r[P];
        load_vec<T>(residual, first + v, r);
#pragma unroll
        for (int j = 0; j < P; ++j) h[i][j] = round_to<T>(h[i][j] + r[j]);
        store_vec<T>(h_out, first + v, h[i]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < P; ++j) h[i][j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < P; ++j) ss += __fmul_rn(h[i][j], h[i][j]);  // h.pow(2) rounds before the sum
  }
  const float s = rms_rstd(block_sum(ss, scratch), k, eps);
  if (threadIdx.x == 0) rstd[row] = s;
  const float sg = amax != nullptr ? nvfp4::global_decode_scale(__ldg(amax)) : 0.0f;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t v = i * (int64_t)blockDim.x + threadIdx.x;
    const bool active = v < nvec;
    float o[P];
    if (active) {
      float wv[P];
      load_vec<T>(w, v, wv);
#pragma unroll
      for (int j = 0; j < P; ++j) o[j] = round_to<T>(wv[j] * round_to<T>(h[i][j] * s));
    } else {
#pragma unroll
      for (int j = 0; j < P; ++j) o[j] = 0.0f;
    }
    if (amax != nullptr) nvfp4::device::fake_quantize_block<P, kGroup<T>>(o, sg);  // every lane: it shuffles
    if (active) store_vec<T>(y, first + v, o);
  }
}

template <typename T, int kVecs>
__global__ void rms_norm_backward_kernel(const typename Io<T>::Raw* __restrict__ gy,
                                         const typename Io<T>::Raw* __restrict__ gh,
                                         const typename Io<T>::Raw* __restrict__ h,
                                         const typename Io<T>::Raw* __restrict__ w, const float* __restrict__ rstd,
                                         typename Io<T>::Raw* __restrict__ gx, float* __restrict__ gw_partial,
                                         int64_t rows, int64_t k, const float* __restrict__ clip_amax) {
  constexpr int P = kPer<T>;
  __shared__ float scratch[33];
  const int64_t nvec = k / P;
  const float a = clip_amax != nullptr ? __ldg(clip_amax) : 0.0f;
  float wf[kVecs][P], gw[kVecs][P];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t v = i * (int64_t)blockDim.x + threadIdx.x;
#pragma unroll
    for (int j = 0; j < P; ++j) wf[i][j] = gw[i][j] = 0.0f;
    if (v < nvec) load_vec<T>(w, v, wf[i]);
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float s = __ldg(rstd + row);
    const int64_t first = row * nvec;
    float hv[kVecs][P], gn[kVecs][P];
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t v = i * (int64_t)blockDim.x + threadIdx.x;
      if (v < nvec) {
        float g[P];
        load_vec<T>(h, first + v, hv[i]);
        load_vec<T>(gy, first + v, g);
#pragma unroll
        for (int j = 0; j < P; ++j) {
          const float nt = round_to<T>(hv[i][j] * s);
          float up = g[j];
          if (clip_amax != nullptr && !(fabsf(round_to<T>(wf[i][j] * nt)) <= a)) up = 0.0f;  // clipped STE
          gw[i][j] += up * nt;
          gn[i][j] = round_to<T>(up * wf[i][j]);  // mul backward, stored in T
          dot += gn[i][j] * hv[i][j];
        }
      } else {
#pragma unroll
        for (int j = 0; j < P; ++j) hv[i][j] = gn[i][j] = 0.0f;
      }
    }
    // rsqrt, mean and pow backward, as autograd chains them (see the CPU reference).
    const float grad_sq = ((-0.5f * block_sum(dot, scratch)) * (s * s * s)) / static_cast<float>(k);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t v = i * (int64_t)blockDim.x + threadIdx.x;
      if (v >= nvec) continue;
      float out[P];
#pragma unroll
      for (int j = 0; j < P; ++j) out[j] = round_to<T>(gn[i][j] * s + grad_sq * (2.0f * hv[i][j]));
      if (gh != nullptr) {
        float other[P];
        load_vec<T>(gh, first + v, other);
#pragma unroll
        for (int j = 0; j < P; ++j) out[j] += other[j];  // autograd sums h's two gradients in T
      }
      store_vec<T>(gx, first + v, out);
    }
  }
  if (gw_partial == nullptr) return;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t v = i * (int64_t)blockDim.x + threadIdx.x;
    if (v >= nvec) continue;
#pragma unroll
    for (int j = 0; j < P; ++j) gw_partial[blockIdx.x * k + v * P + j] = gw[i][j];
  }
}

// Calls f(integral_constant<kVecs>, threads) with the fewest vectors per thread that keep a CTA at most
// kMaxThreads threads (a multiple of 32).
constexpr int kMaxThreads = 512;

template <typename F>
void with_vectors_per_thread(int64_t nvec, F&& f) {
  auto threads_for = [&](int64_t per) { return ((nvec + per - 1) / per + 31) / 32 * 32; };
  if (threads_for(1) <= kMaxThreads) return f(std::integral_constant<int, 1>{}, threads_for(1));
  if (threads_for(2) <= kMaxThreads) return f(std::integral_constant<int, 2>{}, threads_for(2));
  if (threads_for(4) <= kMaxThreads) return f(std::integral_constant<int, 4>{}, threads_for(4));
  TORCH_CHECK(false, "fused::rms_norm: rows of ", nvec, " vectors are too long for the CUDA kernel");
}

template <typename T>
typename Io<T>::Raw* raw(const torch::Tensor& t) {
  return t.defined() ? reinterpret_cast<typename Io<T>::Raw*>(t.data_ptr<T>()) : nullptr;
}

}  // namespace

void rms_norm_forward_cuda(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& w, float eps,
                           const OutputQuant& q, torch::Tensor& y, torch::Tensor& rstd, torch::Tensor& h_out) {
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t k = x.size(-1), rows = x.numel() / k;
  if (rows == 0) return;
  nvfp4::dispatch_float_types(x.scalar_type(), "fused::rms_norm_cuda", [&](auto tag) {
    using T = decltype(tag);
    with_vectors_per_thread(k / kPer<T>, [&](auto vecs, int64_t threads) {
      rms_norm_forward_kernel<T, decltype(vecs)::value><<<rows, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
          raw<T>(x), raw<T>(residual), raw<T>(w), raw<T>(y), residual.defined() ? raw<T>(h_out) : nullptr,
          rstd.data_ptr<float>(), k, eps, q.enabled() ? q.amax.data_ptr<float>() : nullptr);
    });
  });
  check_launch();
}

void rms_norm_backward_cuda(const torch::Tensor& grad_y, const torch::Tensor& grad_h, const torch::Tensor& h,
                            const torch::Tensor& w, const torch::Tensor& rstd, const OutputQuant& q,
                            torch::Tensor& grad_x, torch::Tensor& grad_w) {
  c10::cuda::CUDAGuard guard(h.device());
  const int64_t k = h.size(-1), rows = h.numel() / k;
  if (rows == 0) {
    if (grad_w.defined()) grad_w.zero_();
    return;
  }
  const int64_t grid = std::min<int64_t>(rows, 8 * sm_count());  // enough warps in flight to hide latency
  torch::Tensor partial;
  if (grad_w.defined()) partial = torch::empty({grid, k}, h.options().dtype(torch::kFloat32));
  nvfp4::dispatch_float_types(h.scalar_type(), "fused::rms_norm_backward_cuda", [&](auto tag) {
    using T = decltype(tag);
    with_vectors_per_thread(k / kPer<T>, [&](auto vecs, int64_t threads) {
      rms_norm_backward_kernel<T, decltype(vecs)::value><<<grid, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
          raw<T>(grad_y), raw<T>(grad_h), raw<T>(h), raw<T>(w), rstd.data_ptr<float>(), raw<T>(grad_x),
          partial.defined() ? partial.data_ptr<float>() : nullptr, rows, k,
          q.enabled() && q.clipped ? q.amax.data_ptr<float>() : nullptr);
    });
  });
  check_launch();
  if (grad_w.defined()) grad_w.copy_(partial.sum(0));
}

}  // namespace qad::fused::kernels
