// The one place that knows LibTorch versions apart. qad builds on Debian's LibTorch 1.13 (CPU, CI) and
// on LibTorch 2.x with CUDA (the GPU machine); everything version-dependent goes through here.
#pragma once
#include <torch/torch.h>

#include <optional>

#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

#ifndef TORCH_VERSION_MAJOR
#define TORCH_VERSION_MAJOR 1
#define TORCH_VERSION_MINOR 13
#endif

#define QAD_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace qad::compat {

// Float8 dtypes exist from LibTorch 2.1; before that FP8 bytes travel as uint8.
constexpr bool kHasFloat8 = QAD_TORCH_AT_LEAST(2, 1);

// Fused scaled-dot-product attention (flash / memory-efficient kernels) exists from LibTorch 2.0.
constexpr bool kHasSdpa = QAD_TORCH_AT_LEAST(2, 0);

inline bool cuda_available() { return torch::cuda::is_available(); }

// The torch dtype that holds FP8 E4M3 bytes: Float8_e4m3fn from 2.1, raw uint8 before.
inline torch::ScalarType float8_e4m3_type() {
#if QAD_TORCH_AT_LEAST(2, 1)
  return torch::kFloat8_e4m3fn;
#else
  return torch::kUInt8;
#endif
}

// SDPA takes grouped-query k/v ([B, Hkv, S, D] with H a multiple of Hkv) natively from LibTorch 2.5.
constexpr bool kSdpaHasGqa = QAD_TORCH_AT_LEAST(2, 5);

// Fused attention softmax(q k^T / sqrt(d) + mask) v on [B, H, T, D] queries. k/v have H heads, or fewer
// when `gqa` (only where kSdpaHasGqa). `mask` is boolean (true = attend) or undefined; `is_causal` asks for
// the upper-triangular mask instead. Only callable where kHasSdpa; callers keep a math path for the rest.
inline torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k,
                                                  const torch::Tensor& v, const torch::Tensor& mask,
                                                  bool is_causal, bool gqa = false) {
#if QAD_TORCH_AT_LEAST(2, 5)
  std::optional<torch::Tensor> m;
  if (mask.defined()) m = mask;
  return at::scaled_dot_product_attention(q, k, v, m, 0.0, is_causal, std::nullopt, gqa);
#elif QAD_TORCH_AT_LEAST(2, 0)
  TORCH_CHECK(!gqa, "grouped-query SDPA needs LibTorch >= 2.5");
  c10::optional<torch::Tensor> m;
  if (mask.defined()) m = mask;
  return at::scaled_dot_product_attention(q, k, v, m, 0.0, is_causal);
#else
  (void)q, (void)k, (void)v, (void)mask, (void)is_causal, (void)gqa;
  TORCH_CHECK(false, "scaled_dot_product_attention needs LibTorch >= 2.0");
#endif
}

}  // namespace qad::compat

namespace qad::compat {

// TF32 for FP32 matrix products on CUDA (cuBLAS): the trainer turns it on for the CKA products (the model
// itself computes in BF16). A no-op on CPU.
inline void set_tf32_matmul(bool on) { at::globalContext().setAllowTF32CuBLAS(on); }

// a.bmm(b) of two BF16 / FP16 batches with an FP32 result: cuBLAS accumulates in FP32 and stores the accumulator
// without rounding it to 16 bits (LibTorch >= 2.8's out_dtype overload, CUDA only); elsewhere the FP32 product of
// the widened inputs (the same values up to the summation order).
inline torch::Tensor bmm_fp32_out(const torch::Tensor& a, const torch::Tensor& b) {
#if QAD_TORCH_AT_LEAST(2, 8)
  if (a.is_cuda() && a.scalar_type() != at::kFloat) return at::bmm(a, b, at::kFloat);
#endif
  return a.to(at::kFloat).bmm(b.to(at::kFloat));
}

}  // namespace qad::compat
