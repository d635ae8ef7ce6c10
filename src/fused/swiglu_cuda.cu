// CUDA kernels of the fused SwiGLU (+ NVFP4 fake quantization of down_proj's input) and its backward; the
// reference is swiglu_cpu.cc. Each thread moves one 16-byte vector of gate, up and the output; a 16-element
// NVFP4 block is held by kGroup neighbouring lanes (rows are multiples of 16, so blocks never straddle rows).
#include <c10/cuda/CUDAGuard.h>

#include "fused/cuda_util.cuh"
#include "fused/kernels.h"
#include "fused/row_math.h"
#include "nvfp4/dtype_dispatch.h"

namespace qad::fused::kernels {
namespace {

using namespace device;

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) swiglu_forward_kernel(const typename Io<T>::Raw* __restrict__ gate,
                                                                  const typename Io<T>::Raw* __restrict__ up,
                                                                  typename Io<T>::Raw* __restrict__ y, int64_t nvec,
                                                                  const float* __restrict__ amax) {
  constexpr int P = kPer<T>;
  const int64_t v = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const bool active = v < nvec;  // inactive lanes still join the shuffles
  float o[P];
  if (active) {
    float g[P], u[P];
    load_vec<T>(gate, v, g);
    load_vec<T>(up, v, u);
    // silu in float rounded to T, then the product rounded to T: two ATen ops in T.
#pragma unroll
    for (int j = 0; j < P; ++j) o[j] = round_to<T>(round_to<T>(silu(g[j])) * u[j]);
  } else {
#pragma unroll
    for (int j = 0; j < P; ++j) o[j] = 0.0f;
  }
  if (amax != nullptr) nvfp4::device::fake_quantize_block<P, kGroup<T>>(o, nvfp4::global_decode_scale(__ldg(amax)));
  if (active) store_vec<T>(y, v, o);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) swiglu_backward_kernel(
    const typename Io<T>::Raw* __restrict__ gy, const typename Io<T>::Raw* __restrict__ gate,
    const typename Io<T>::Raw* __restrict__ up, typename Io<T>::Raw* __restrict__ grad_gate,
    typename Io<T>::Raw* __restrict__ grad_up, int64_t nvec, const float* __restrict__ clip_amax) {
  constexpr int P = kPer<T>;
  const int64_t v = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (v >= nvec) return;
  float g[P], u[P], d[P], gg[P], gu[P];
  load_vec<T>(gate, v, g);
  load_vec<T>(up, v, u);
  load_vec<T>(gy, v, d);
  const float a = clip_amax != nullptr ? __ldg(clip_amax) : 0.0f;
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const float s = round_to<T>(silu(g[j]));
    float dy = d[j];
    if (clip_amax != nullptr && !(fabsf(round_to<T>(s * u[j])) <= a)) dy = 0.0f;  // clipped STE
    gu[j] = dy * s;                                      // mul backward, rounded to T by the store
    gg[j] = silu_backward(round_to<T>(dy * u[j]), g[j]);  // mul backward in T, then silu's backward
  }
  store_vec<T>(grad_gate, v, gg);
  store_vec<T>(grad_up, v, gu);
}

template <typename T>
typename Io<T>::Raw* raw(const torch::Tensor& t) {
  return reinterpret_cast<typename Io<T>::Raw*>(t.data_ptr<T>());
}

}  // namespace

void swiglu_forward_cuda(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& q, torch::Tensor& y) {
  c10::cuda::CUDAGuard guard(gate.device());
  nvfp4::dispatch_float_types(gate.scalar_type(), "fused::swiglu_cuda", [&](auto tag) {
    using T = decltype(tag);
    const int64_t nvec = gate.numel() / kPer<T>;
    if (nvec == 0) return;
    swiglu_forward_kernel<T><<<(nvec + kThreads - 1) / kThreads, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        raw<T>(gate), raw<T>(up), raw<T>(y), nvec, q.enabled() ? q.amax.data_ptr<float>() : nullptr);
  });
  check_launch();
}

void swiglu_backward_cuda(const torch::Tensor& grad_y, const torch::Tensor& gate, const torch::Tensor& up,
                          const OutputQuant& q, torch::Tensor& grad_gate, torch::Tensor& grad_up) {
  c10::cuda::CUDAGuard guard(gate.device());
  nvfp4::dispatch_float_types(gate.scalar_type(), "fused::swiglu_backward_cuda", [&](auto tag) {
    using T = decltype(tag);
    const int64_t nvec = gate.numel() / kPer<T>;
    if (nvec == 0) return;
    swiglu_backward_kernel<T><<<(nvec + kThreads - 1) / kThreads, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        raw<T>(grad_y), raw<T>(gate), raw<T>(up), raw<T>(grad_gate), raw<T>(grad_up), nvec,
        q.enabled() && q.clipped ? q.amax.data_ptr<float>() : nullptr);
  });
  check_launch();
}

}  // namespace qad::fused::kernels
