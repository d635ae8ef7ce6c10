// CUDA kernels of the fused rotary embedding (with Qwen3's per-head RMSNorm before it) and its backward; the
// reference is rope_cpu.cc. kLanes neighbouring threads own one head row of D elements: each holds one
// 16-byte vector of the first half and the matching vector of the second half, which is what rotate_half
// pairs, so the rotation needs no data exchange; the norm's sum of squares is a shuffle over the kLanes lanes.
// Products and sums use __fmul_rn / __fadd_rn: the unfused ops round each one to the dtype, and a contracted
// FMA would not.
#include <c10/cuda/CUDAGuard.h>

#include "fused/cuda_util.cuh"
#include "fused/kernels.h"
#include "fused/row_math.h"
#include "nvfp4/dtype_dispatch.h"

namespace qad::fused::kernels {
namespace {

using namespace device;

constexpr int kThreads = 256;

// Where head row r of x ([B*T*H] rows) goes in the [B, H, T, D] output.
__device__ __forceinline__ int64_t out_row(int64_t r, int64_t t_len, int64_t heads) {
  const int64_t bt = r / heads, head = r % heads;
  return ((bt / t_len) * heads + head) * t_len + bt % t_len;
}

template <int kLanes>
__device__ __forceinline__ float lanes_sum(float v) {
#pragma unroll
  for (int off = 1; off < kLanes; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T, int kLanes, bool kNorm>
__global__ void __launch_bounds__(kThreads) rope_forward_kernel(
    const typename Io<T>::Raw* __restrict__ x, const typename Io<T>::Raw* __restrict__ w,
    const typename Io<T>::Raw* __restrict__ cos, const typename Io<T>::Raw* __restrict__ sin,
    typename Io<T>::Raw* __restrict__ out, float* __restrict__ rstd, int64_t rows, int64_t t_len, int64_t heads,
    float eps) {
  constexpr int P = kPer<T>;
  constexpr int kVecsPerRow = 2 * kLanes;  // D / P
  const int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t r = g / kLanes;
  const int lane = static_cast<int>(g % kLanes);
  const bool active = r < rows;
  float lo[P], hi[P];
  if (active) {
    load_vec<T>(x, r * kVecsPerRow + lane, lo);
    load_vec<T>(x, r * kVecsPerRow + kLanes + lane, hi);
  } else {
#pragma unroll
    for (int j = 0; j < P; ++j) lo[j] = hi[j] = 0.0f;
  }
  if constexpr (kNorm) {
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < P; ++j) ss += __fmul_rn(lo[j], lo[j]) + __fmul_rn(hi[j], hi[j]);
    const float s = rms_rstd(lanes_sum<kLanes>(ss), 2 * kLanes * P, eps);  // every lane: it shuffles
    if (!active) return;
    if (lane == 0) rstd[r] = s;
    float wl[P], wh[P];
    load_vec<T>(w, lane, wl);
    load_vec<T>(w, kLanes + lane, wh);
#pragma unroll
    for (int j = 0; j < P; ++j) {
      lo[j] = round_to<T>(__fmul_rn(wl[j], round_to<T>(__fmul_rn(lo[j], s))));
      hi[j] = round_to<T>(__fmul_rn(wh[j], round_to<T>(__fmul_rn(hi[j], s))));
    }
  }
  if (!active) return;
  const int64_t bt = r / heads;
  float cl[P], ch[P], sl[P], sh[P], ol[P], oh[P];
  load_vec<T>(cos, bt * kVecsPerRow + lane, cl);
  load_vec<T>(cos, bt * kVecsPerRow + kLanes + lane, ch);
  load_vec<T>(sin, bt * kVecsPerRow + lane, sl);
  load_vec<T>(sin, bt * kVecsPerRow + kLanes + lane, sh);
  // x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x_hi, x_lo).
#pragma unroll
  for (int j = 0; j < P; ++j) {
    ol[j] = __fadd_rn(round_to<T>(__fmul_rn(lo[j], cl[j])), round_to<T>(__fmul_rn(-hi[j], sl[j])));
    oh[j] = __fadd_rn(round_to<T>(__fmul_rn(hi[j], ch[j])), round_to<T>(__fmul_rn(lo[j], sh[j])));
  }
  const int64_t o = out_row(r, t_len, heads);
  store_vec<T>(out, o * kVecsPerRow + lane, ol);
  store_vec<T>(out, o * kVecsPerRow + kLanes + lane, oh);
}

template <typename T, int kLanes, bool kNorm>
__global__ void __launch_bounds__(kThreads) rope_backward_kernel(
    const typename Io<T>::Raw* __restrict__ gout, const typename Io<T>::Raw* __restrict__ x,
    const typename Io<T>::Raw* __restrict__ w, const typename Io<T>::Raw* __restrict__ cos,
    const typename Io<T>::Raw* __restrict__ sin, const float* __restrict__ rstd, typename Io<T>::Raw* __restrict__ gx,
    float* __restrict__ gw_partial, int64_t rows, int64_t t_len, int64_t heads) {
  constexpr int P = kPer<T>;
  constexpr int kVecsPerRow = 2 * kLanes;
  constexpr int D = kVecsPerRow * P;
  const int lane = threadIdx.x % kLanes;
  const int64_t rows_per_pass = (int64_t)gridDim.x * (blockDim.x / kLanes);
  const int64_t first = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / kLanes;
  const int64_t passes = (rows + rows_per_pass - 1) / rows_per_pass;  // the same for every thread
  float wl[P], wh[P], acc_l[P], acc_h[P];
#pragma unroll
  for (int j = 0; j < P; ++j) wl[j] = wh[j] = acc_l[j] = acc_h[j] = 0.0f;
  if constexpr (kNorm) {
    load_vec<T>(w, lane, wl);
    load_vec<T>(w, kLanes + lane, wh);
  }
  for (int64_t pass = 0; pass < passes; ++pass) {
    const int64_t r = first + pass * rows_per_pass;
    const bool active = r < rows;
    float ml[P], mh[P];  // the gradient reaching the rotation's input
    if (active) {
      const int64_t o = out_row(r, t_len, heads), bt = r / heads;
      float gl[P], gh[P], cl[P], ch[P], sl[P], sh[P];
      load_vec<T>(gout, o * kVecsPerRow + lane, gl);
      load_vec<T>(gout, o * kVecsPerRow + kLanes + lane, gh);
      load_vec<T>(cos, bt * kVecsPerRow + lane, cl);
      load_vec<T>(cos, bt * kVecsPerRow + kLanes + lane, ch);
      load_vec<T>(sin, bt * kVecsPerRow + lane, sl);
      load_vec<T>(sin, bt * kVecsPerRow + kLanes + lane, sh);
#pragma unroll
      for (int j = 0; j < P; ++j) {
        ml[j] = round_to<T>(__fadd_rn(round_to<T>(__fmul_rn(gl[j], cl[j])), round_to<T>(__fmul_rn(gh[j], sh[j]))));
        mh[j] = round_to<T>(__fsub_rn(round_to<T>(__fmul_rn(gh[j], ch[j])), round_to<T>(__fmul_rn(gl[j], sl[j]))));
      }
    } else {
#pragma unroll
      for (int j = 0; j < P; ++j) ml[j] = mh[j] = 0.0f;
    }
    if constexpr (!kNorm) {
      if (active) {
        store_vec<T>(gx, r * kVecsPerRow + lane, ml);
        store_vec<T>(gx, r * kVecsPerRow + kLanes + lane, mh);
      }
      continue;
    } else {
      float xl[P], xh[P], nl[P], nh[P];
      const float s = active ? __ldg(rstd + r) : 0.0f;
      float dot = 0.0f;
      if (active) {
        load_vec<T>(x, r * kVecsPerRow + lane, xl);
        load_vec<T>(x, r * kVecsPerRow + kLanes + lane, xh);
      } else {
#pragma unroll
        for (int j = 0; j < P; ++j) xl[j] = xh[j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < P; ++j) {
        acc_l[j] += ml[j] * round_to<T>(xl[j] * s);
        acc_h[j] += mh[j] * round_to<T>(xh[j] * s);
        nl[j] = round_to<T>(ml[j] * wl[j]);
        nh[j] = round_to<T>(mh[j] * wh[j]);
        dot += nl[j] * xl[j] + nh[j] * xh[j];
      }
      const float grad_sq = ((-0.5f * lanes_sum<kLanes>(dot)) * (s * s * s)) / static_cast<float>(D);
      if (active) {
#pragma unroll
        for (int j = 0; j < P; ++j) {
          nl[j] = nl[j] * s + grad_sq * (2.0f * xl[j]);
          nh[j] = nh[j] * s + grad_sq * (2.0f * xh[j]);
        }
        store_vec<T>(gx, r * kVecsPerRow + lane, nl);
        store_vec<T>(gx, r * kVecsPerRow + kLanes + lane, nh);
      }
    }
  }
  if constexpr (kNorm) {
    if (gw_partial == nullptr) return;
    // The CTA's row slots hold the same columns: sum them in slot order, one partial row per CTA.
    extern __shared__ float red[];  // [blockDim.x / kLanes][D]
    const int slot = threadIdx.x / kLanes;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      red[slot * D + lane * P + j] = acc_l[j];
      red[slot * D + (kLanes + lane) * P + j] = acc_h[j];
    }
    __syncthreads();
    const int slots = blockDim.x / kLanes;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      float total = 0.0f;
      for (int i = 0; i < slots; ++i) total += red[i * D + c];
      gw_partial[blockIdx.x * (int64_t)D + c] = total;
    }
  }
}

// Calls f(integral_constant<kLanes>) for half = D/2 = kLanes * P, kLanes a power of two up to 32.
template <typename F>
void with_lanes(int64_t lanes, F&& f) {
  switch (lanes) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    default: TORCH_CHECK(false, "fused::rope: head_dim / 2 must be a power-of-two number (<= 32) of 16-byte vectors");
  }
}

template <typename T>
typename Io<T>::Raw* raw(const torch::Tensor& t) {
  return t.defined() ? reinterpret_cast<typename Io<T>::Raw*>(t.data_ptr<T>()) : nullptr;
}

}  // namespace

void rope_forward_cuda(const torch::Tensor& x, const torch::Tensor& w, float eps, const torch::Tensor& cos,
                       const torch::Tensor& sin, torch::Tensor& out, torch::Tensor& rstd) {
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t t_len = x.size(1), heads = x.size(2), d = x.size(3), rows = x.numel() / d;
  if (rows == 0) return;
  nvfp4::dispatch_float_types(x.scalar_type(), "fused::rope_cuda", [&](auto tag) {
    using T = decltype(tag);
    with_lanes(d / 2 / kPer<T>, [&](auto lanes) {
      constexpr int L = decltype(lanes)::value;
      const int64_t grid = (rows * L + kThreads - 1) / kThreads;
      auto stream = at::cuda::getCurrentCUDAStream();
      if (w.defined()) {
        rope_forward_kernel<T, L, true><<<grid, kThreads, 0, stream>>>(raw<T>(x), raw<T>(w), raw<T>(cos), raw<T>(sin),
                                                                      raw<T>(out), rstd.data_ptr<float>(), rows, t_len,
                                                                      heads, eps);
      } else {
        rope_forward_kernel<T, L, false><<<grid, kThreads, 0, stream>>>(raw<T>(x), nullptr, raw<T>(cos), raw<T>(sin),
                                                                       raw<T>(out), nullptr, rows, t_len, heads, eps);
      }
    });
  });
  check_launch();
}

void rope_backward_cuda(const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& w,
                        const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& rstd,
                        torch::Tensor& grad_x, torch::Tensor& grad_w) {
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t t_len = x.size(1), heads = x.size(2), d = x.size(3), rows = x.numel() / d;
  if (rows == 0) {
    if (grad_w.defined()) grad_w.zero_();
    return;
  }
  torch::Tensor partial;
  nvfp4::dispatch_float_types(x.scalar_type(), "fused::rope_backward_cuda", [&](auto tag) {
    using T = decltype(tag);
    with_lanes(d / 2 / kPer<T>, [&](auto lanes) {
      constexpr int L = decltype(lanes)::value;
      const int64_t grid = std::min<int64_t>((rows * L + kThreads - 1) / kThreads, 8 * sm_count());
      auto stream = at::cuda::getCurrentCUDAStream();
      if (w.defined()) {
        if (grad_w.defined()) partial = torch::empty({grid, d}, x.options().dtype(torch::kFloat32));
        const size_t shared = (kThreads / L) * d * sizeof(float);
        rope_backward_kernel<T, L, true><<<grid, kThreads, shared, stream>>>(
            raw<T>(grad_out), raw<T>(x), raw<T>(w), raw<T>(cos), raw<T>(sin), rstd.data_ptr<float>(), raw<T>(grad_x),
            partial.defined() ? partial.data_ptr<float>() : nullptr, rows, t_len, heads);
      } else {
        rope_backward_kernel<T, L, false><<<grid, kThreads, 0, stream>>>(raw<T>(grad_out), raw<T>(x), nullptr,
                                                                        raw<T>(cos), raw<T>(sin), nullptr,
                                                                        raw<T>(grad_x), nullptr, rows, t_len, heads);
      }
    });
  });
  check_launch();
  if (partial.defined()) grad_w.copy_(partial.sum(0));
}

}  // namespace qad::fused::kernels
