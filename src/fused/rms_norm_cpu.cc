// The CPU reference of the fused RMSNorm (+ residual add, + NVFP4 fake quantization of the output): plain loops,
// each step the float operation the unfused LibTorch ops perform, in their order (docs/fused_kernels.md).
#include <ATen/Parallel.h>

#include <vector>

#include "fused/cpu_util.h"
#include "fused/kernels.h"
#include "fused/row_math.h"
#include "nvfp4/dtype_dispatch.h"
#include "nvfp4/kernels.h"

namespace qad::fused::kernels {
namespace {

using cpu::round_to;

// y = (w * (h * rstd).to(T)) with h = x (or x + residual, rounded to T); the quantization comes after.
template <typename T>
void forward_rows(const T* x, const T* res, const T* w, float eps, int64_t rows, int64_t k, T* y, float* rstd,
                  T* h_out) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> h(k);
    for (int64_t r = begin; r < end; ++r) {
      double ss = 0.0;  // close to the correctly rounded sum, as LibTorch's pairwise sums and the CUDA tree are
      for (int64_t j = 0; j < k; ++j) {
        float v = static_cast<float>(x[r * k + j]);
        if (res != nullptr) {
          v = round_to<T>(v + static_cast<float>(res[r * k + j]));
          h_out[r * k + j] = static_cast<T>(v);
        }
        h[j] = v;
        ss += static_cast<double>(v * v);  // h.pow(2) rounds each square to float
      }
      const float s = rms_rstd(static_cast<float>(ss), k, eps);
      rstd[r] = s;
      for (int64_t j = 0; j < k; ++j) y[r * k + j] = static_cast<T>(static_cast<float>(w[j]) * round_to<T>(h[j] * s));
    }
  });
}

// Autograd's backward of the unfused ops: STE through the quantizer, mul backward rounded to T, then
// rsqrt / mean / pow backward in float (see the CUDA kernel for the same steps).
template <typename T>
void backward_rows(const T* gy, const T* gh, const T* h, const T* w, const float* rstd, bool clipped, float amax,
                   int64_t rows, int64_t k, T* gx, float* gw) {
  auto upstream = [&](int64_t r, int64_t j, float nt) {
    const float pre = clipped ? round_to<T>(static_cast<float>(w[j]) * nt) : 0.0f;
    return cpu::ste(static_cast<float>(gy[r * k + j]), pre, clipped, amax);
  };
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> gn(k);
    for (int64_t r = begin; r < end; ++r) {
      const float s = rstd[r];
      float dot = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const float hf = static_cast<float>(h[r * k + j]);
        gn[j] = round_to<T>(upstream(r, j, round_to<T>(hf * s)) * static_cast<float>(w[j]));
        dot += gn[j] * hf;
      }
      const float grad_var = (-0.5f * dot) * (s * s * s);
      const float grad_sq = grad_var / static_cast<float>(k);
      for (int64_t j = 0; j < k; ++j) {
        const float hf = static_cast<float>(h[r * k + j]);
        float g = round_to<T>(gn[j] * s + grad_sq * (2.0f * hf));
        if (gh != nullptr) g = g + static_cast<float>(gh[r * k + j]);
        gx[r * k + j] = static_cast<T>(g);
      }
    }
  });
  if (gw == nullptr) return;
  // Column by column, rows in order: deterministic.
  at::parallel_for(0, k, 64, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      float acc = 0.0f;
      for (int64_t r = 0; r < rows; ++r) {
        const float nt = round_to<T>(static_cast<float>(h[r * k + j]) * rstd[r]);
        acc += upstream(r, j, nt) * nt;
      }
      gw[j] = acc;
    }
  });
}

template <typename T>
const T* ptr_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

void rms_norm_forward_cpu(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& w, float eps,
                          const OutputQuant& q, torch::Tensor& y, torch::Tensor& rstd, torch::Tensor& h_out) {
  const int64_t k = x.size(-1), rows = x.numel() / k;
  nvfp4::dispatch_float_types(x.scalar_type(), "fused::rms_norm_cpu", [&](auto tag) {
    using T = decltype(tag);
    forward_rows<T>(x.data_ptr<T>(), ptr_or_null<T>(residual), w.data_ptr<T>(), eps, rows, k, y.data_ptr<T>(),
                    rstd.data_ptr<float>(), residual.defined() ? h_out.data_ptr<T>() : nullptr);
  });
  // The quantizer reads the finished normed rows: the unfused composition, through the NVFP4 reference.
  if (q.enabled()) nvfp4::kernels::fake_quantize_cpu(y, q.amax, y);
}

void rms_norm_backward_cpu(const torch::Tensor& grad_y, const torch::Tensor& grad_h, const torch::Tensor& h,
                           const torch::Tensor& w, const torch::Tensor& rstd, const OutputQuant& q,
                           torch::Tensor& grad_x, torch::Tensor& grad_w) {
  const int64_t k = h.size(-1), rows = h.numel() / k;
  const bool clipped = q.enabled() && q.clipped;
  const float amax = clipped ? q.amax.item<float>() : 0.0f;
  nvfp4::dispatch_float_types(h.scalar_type(), "fused::rms_norm_backward_cpu", [&](auto tag) {
    using T = decltype(tag);
    backward_rows<T>(grad_y.data_ptr<T>(), ptr_or_null<T>(grad_h), h.data_ptr<T>(), w.data_ptr<T>(),
                     rstd.data_ptr<float>(), clipped, amax, rows, k, grad_x.data_ptr<T>(),
                     grad_w.defined() ? grad_w.data_ptr<float>() : nullptr);
  });
}

}  // namespace qad::fused::kernels
