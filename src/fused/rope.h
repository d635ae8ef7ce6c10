// Rotary position embedding of q or k (transformers' apply_rotary_pos_emb with rotate_half), optionally after
// Qwen3's per-head RMSNorm (q_norm / k_norm), fused; forward and backward on the CPU (reference loops) and
// CUDA (kernels). It reads the projection's output as [B, T, H, D] and writes [B, H, T, D] (what attention
// takes), so the transpose costs nothing. The forward gives the bits of the unfused ops in the model dtype
// except the norm's FP32 reduction (its summation order): each product and the sum rounded to the dtype.
#pragma once
#include <torch/torch.h>

namespace qad::fused {

struct RopeForward {
  torch::Tensor out;   // [B, H, T, D], x's dtype, contiguous
  torch::Tensor rstd;  // float32 [B, T, H] (the norm's); undefined without a norm
};

struct RopeGrads {
  torch::Tensor input;   // [B, T, H, D]
  torch::Tensor weight;  // float32 [D]; undefined without a norm or when not asked for
};

// x [B, T, H, D] (any strides; the projection output's view); norm_weight [D] or undefined; cos, sin [B, T, D]
// in x's dtype.
RopeForward rope_forward(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps, const torch::Tensor& cos,
                         const torch::Tensor& sin);
void rope_forward_out(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps, const torch::Tensor& cos,
                      const torch::Tensor& sin, RopeForward& out);

RopeGrads rope_backward(const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& norm_weight,
                        const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& rstd, bool weight_grad);
void rope_backward_out(const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& norm_weight,
                       const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& rstd, RopeGrads& out);

// Whether the CUDA kernel takes this head size and dtype (D/2 a power-of-two number, at most 32, of 16-byte
// vectors: D = 64, 128, 256 in bfloat16).
bool rope_cuda_supports(const torch::Tensor& x);

}  // namespace qad::fused
