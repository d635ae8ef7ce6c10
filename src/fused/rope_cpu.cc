// The CPU reference of the fused rotary embedding (with Qwen3's per-head RMSNorm before it): transformers'
// apply_rotary_pos_emb, `x * cos + rotate_half(x) * sin`, each product and the sum rounded to the model dtype
// as the unfused ops do, reading x as [B, T, H, D] (the projection's output) and writing [B, H, T, D].
#include <ATen/Parallel.h>

#include <vector>

#include "fused/cpu_util.h"
#include "fused/kernels.h"
#include "fused/row_math.h"
#include "nvfp4/dtype_dispatch.h"

namespace qad::fused::kernels {
namespace {

using cpu::round_to;

struct Dims {
  int64_t b, t, h, d;
};

Dims dims_of(const torch::Tensor& x) { return {x.size(0), x.size(1), x.size(2), x.size(3)}; }

// Row r of x ([B*T*H] rows) is position bt = r / H of head r % H; its output row in [B, H, T, D].
int64_t out_row(const Dims& s, int64_t r) {
  const int64_t bt = r / s.h, head = r % s.h;
  return ((bt / s.t) * s.h + head) * s.t + bt % s.t;
}

template <typename T>
void forward_rows(const T* x, const T* w, float eps, const T* cos, const T* sin, const Dims& s, T* out, float* rstd) {
  const int64_t d = s.d, half = d / 2;
  at::parallel_for(0, s.b * s.t * s.h, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> m(d);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * d;
      for (int64_t j = 0; j < d; ++j) m[j] = static_cast<float>(xr[j]);
      if (w != nullptr) {
        double ss = 0.0;  // see rms_norm_cpu.cc
        for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(m[j] * m[j]);
        const float st = rms_rstd(static_cast<float>(ss), d, eps);
        rstd[r] = st;
        for (int64_t j = 0; j < d; ++j) m[j] = round_to<T>(static_cast<float>(w[j]) * round_to<T>(m[j] * st));
      }
      const T* c = cos + (r / s.h) * d;
      const T* sn = sin + (r / s.h) * d;
      T* o = out + out_row(s, r) * d;
      for (int64_t j = 0; j < d; ++j) {
        const float rotated = j < half ? -m[j + half] : m[j - half];
        o[j] = static_cast<T>(round_to<T>(m[j] * static_cast<float>(c[j])) +
                              round_to<T>(rotated * static_cast<float>(sn[j])));
      }
    }
  });
}

template <typename T>
void backward_rows(const T* go, const T* x, const T* w, const T* cos, const T* sin, const float* rstd, const Dims& s,
                   T* gx, float* gw) {
  const int64_t d = s.d, half = d / 2, rows = s.b * s.t * s.h;
  // The gradient reaching the rotation's input m, element j of row r: the transpose of the rotation.
  auto grad_m = [&](int64_t r, int64_t j) {
    const T* g = go + out_row(s, r) * d;
    const T* c = cos + (r / s.h) * d;
    const T* sn = sin + (r / s.h) * d;
    const float direct = round_to<T>(static_cast<float>(g[j]) * static_cast<float>(c[j]));
    if (j < half) return round_to<T>(direct + round_to<T>(static_cast<float>(g[j + half]) * static_cast<float>(sn[j + half])));
    return round_to<T>(direct - round_to<T>(static_cast<float>(g[j - half]) * static_cast<float>(sn[j - half])));
  };
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> gn(d);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * d;
      T* gr = gx + r * d;
      if (w == nullptr) {
        for (int64_t j = 0; j < d; ++j) gr[j] = static_cast<T>(grad_m(r, j));
        continue;
      }
      const float st = rstd[r];
      float dot = 0.0f;
      for (int64_t j = 0; j < d; ++j) {
        gn[j] = round_to<T>(grad_m(r, j) * static_cast<float>(w[j]));
        dot += gn[j] * static_cast<float>(xr[j]);
      }
      const float grad_sq = ((-0.5f * dot) * (st * st * st)) / static_cast<float>(d);
      for (int64_t j = 0; j < d; ++j) gr[j] = static_cast<T>(gn[j] * st + grad_sq * (2.0f * static_cast<float>(xr[j])));
    }
  });
  if (w == nullptr || gw == nullptr) return;
  at::parallel_for(0, d, 16, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      float acc = 0.0f;
      for (int64_t r = 0; r < rows; ++r) acc += grad_m(r, j) * round_to<T>(static_cast<float>(x[r * d + j]) * rstd[r]);
      gw[j] = acc;
    }
  });
}

template <typename T>
const T* ptr_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

void rope_forward_cpu(const torch::Tensor& x, const torch::Tensor& w, float eps, const torch::Tensor& cos,
                      const torch::Tensor& sin, torch::Tensor& out, torch::Tensor& rstd) {
  nvfp4::dispatch_float_types(x.scalar_type(), "fused::rope_cpu", [&](auto tag) {
    using T = decltype(tag);
    forward_rows<T>(x.data_ptr<T>(), ptr_or_null<T>(w), eps, cos.data_ptr<T>(), sin.data_ptr<T>(), dims_of(x),
                    out.data_ptr<T>(), rstd.defined() ? rstd.data_ptr<float>() : nullptr);
  });
}

void rope_backward_cpu(const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& w,
                       const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& rstd,
                       torch::Tensor& grad_x, torch::Tensor& grad_w) {
  nvfp4::dispatch_float_types(x.scalar_type(), "fused::rope_backward_cpu", [&](auto tag) {
    using T = decltype(tag);
    backward_rows<T>(grad_out.data_ptr<T>(), x.data_ptr<T>(), ptr_or_null<T>(w), cos.data_ptr<T>(), sin.data_ptr<T>(),
                     rstd.defined() ? rstd.data_ptr<float>() : nullptr, dims_of(x), grad_x.data_ptr<T>(),
                     grad_w.defined() ? grad_w.data_ptr<float>() : nullptr);
  });
}

}  // namespace qad::fused::kernels
