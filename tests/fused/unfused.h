// The unfused LibTorch op sequences the fused kernels replace, written here independently of src/model (as
// transformers writes them), with NVFP4 fake quantization through nvfp4::fake_quantize_ste; and the comparison
// helpers of the fused tests.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/test_util.h"
#include "fused/output_quant.h"
#include "nvfp4/fake_quantize_autograd.h"

namespace qad::fused::testing {

inline torch::Tensor quantize_ste(const torch::Tensor& y, const OutputQuant& q) {
  if (!q.enabled()) return y;
  return nvfp4::fake_quantize_ste(y, q.amax, q.clipped ? nvfp4::StraightThrough::kClipped : nvfp4::StraightThrough::kIdentity);
}

// LlamaRMSNorm's rstd, FP32 [rows].
inline torch::Tensor rms_rstd_ops(const torch::Tensor& h, double eps) {
  auto f = h.to(torch::kFloat32);
  return torch::rsqrt(f.pow(2).mean(-1, /*keepdim=*/true) + eps).reshape({-1});
}

// LlamaRMSNorm with a given rstd (the fused kernel's): the elementwise part, which must match bit for bit.
inline torch::Tensor rms_norm_given_rstd(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& rstd) {
  std::vector<int64_t> shape(h.sizes().begin(), h.sizes().end());
  shape.back() = 1;
  auto n = h.to(torch::kFloat32) * rstd.reshape(shape);
  return w * n.to(h.scalar_type());
}

// LlamaRMSNorm.
inline torch::Tensor rms_norm_ops(const torch::Tensor& h, const torch::Tensor& w, double eps) {
  auto f = h.to(torch::kFloat32);
  auto var = f.pow(2).mean(-1, /*keepdim=*/true);
  f = f * torch::rsqrt(var + eps);
  return w * f.to(h.scalar_type());
}

// silu in float, rounded to the dtype: what ATen's CUDA kernel (and LibTorch 2's CPU kernel) computes for 16-bit
// inputs. LibTorch 1.13's CPU kernel chains bfloat16 ops instead (each rounded), so the CPU tests spell it out.
inline torch::Tensor silu_ops(const torch::Tensor& x) {
  return torch::silu(x.to(torch::kFloat32)).to(x.scalar_type());
}

inline torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Qwen3Attention's q path: optional per-head norm on [B, T, H, D], transpose, apply_rotary_pos_emb.
inline torch::Tensor rope_ops(const torch::Tensor& x, const torch::Tensor& w, double eps, const torch::Tensor& cos,
                              const torch::Tensor& sin) {
  auto m = w.defined() ? rms_norm_ops(x, w, eps) : x;
  m = m.transpose(1, 2);
  return m * cos.unsqueeze(1) + rotate_half(m) * sin.unsqueeze(1);
}

// max |a - b| / max |b|, in float64: the normalised error the gradient tolerances are stated in.
inline double normalised_error(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.detach().cpu().to(torch::kFloat64), b64 = b.detach().cpu().to(torch::kFloat64);
  const double scale = b64.abs().max().item<double>();
  return (a64 - b64).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// Largest relative difference, for FP32 values that should agree to a few ulp.
inline double max_relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.detach().cpu().to(torch::kFloat64), b64 = b.detach().cpu().to(torch::kFloat64);
  return ((a64 - b64).abs() / b64.abs().clamp_min(1e-30)).max().item<double>();
}

// Fraction of elements whose bits differ.
inline double mismatch_fraction(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.detach().cpu().to(torch::kFloat64), b64 = b.detach().cpu().to(torch::kFloat64);
  auto same = (a64 == b64).logical_or(torch::isnan(a64).logical_and(torch::isnan(b64)));
  return 1.0 - same.to(torch::kFloat64).mean().item<double>();
}

// Gradient tolerances (normalised error), by dtype: the fused backward keeps float products that the unfused
// ops round to the dtype, and sums in another order.
inline double grad_tolerance(torch::ScalarType dt) {
  switch (dt) {
    case torch::kFloat32: return 2e-5;
    case torch::kFloat16: return 4e-3;
    default: return 2e-2;  // bfloat16: 8 significant bits
  }
}

// rstd of the fused kernel vs LibTorch's: both FP32 reductions of the same squares in different orders, then
// rsqrt (CUDA's within 2 ulp): a few ulp apart.
constexpr double kRstdRelTolerance = 6e-7;

inline std::vector<torch::ScalarType> float_types() { return {torch::kFloat32, torch::kFloat16, torch::kBFloat16}; }

inline const char* name_of(torch::ScalarType t) {
  return t == torch::kFloat32 ? "float32" : t == torch::kFloat16 ? "float16" : "bfloat16";
}

// A poisoned output buffer followed by a guard region no kernel may touch; returns the first numel elements.
constexpr int64_t kGuard = 64;

inline torch::Tensor guarded(const std::vector<int64_t>& shape, torch::TensorOptions opts, torch::Tensor& storage) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  storage = torch::empty({n + kGuard}, opts);
  qad::testing::poison(storage);
  return storage.narrow(0, 0, n).view(shape);
}

inline bool guard_intact(const torch::Tensor& storage) {
  auto tail = storage.narrow(0, storage.numel() - kGuard, kGuard).cpu().to(torch::kFloat32);
  return torch::isnan(tail).all().item<bool>();
}

}  // namespace qad::fused::testing
