// RMSNorm of the last dimension fused with what surrounds it in a decoder layer: optionally the residual add
// before it, and optionally the NVFP4 fake quantization of its output (the input quantizer of the Linears that
// read it: q/k/v or gate/up). Forward and backward, on the CPU (the reference loops) and CUDA (the kernels).
//
// The forward gives the bits of the unfused ops (transformers' LlamaRMSNorm, then nvfp4::fake_quantize):
//   h = x + residual (rounded to the dtype)     when a residual is given
//   rstd = rsqrt(mean(float(h)^2) + eps)        FP32; the one reduction, so the one step that may differ in
//                                                the last bit from LibTorch's (its summation order)
//   y = fq(w * (float(h) * rstd).to(dtype))     products rounded to the dtype as the unfused ops store them
// The backward is autograd's through those ops with the quantizer's straight-through estimator (docs/fused_kernels.md).
#pragma once
#include <torch/torch.h>

#include "fused/output_quant.h"

namespace qad::fused {

struct RmsNormForward {
  torch::Tensor y;         // x's shape and dtype
  torch::Tensor rstd;      // float32 [rows]: kept for the backward
  torch::Tensor residual;  // h = x + residual (only with a residual)
};

struct RmsNormGrads {
  torch::Tensor input;   // d loss / d h, plus grad_h when given: the gradient of x (and of the residual)
  torch::Tensor weight;  // float32 [K]; undefined when not asked for
};

// residual undefined: no add. Outputs are allocated here.
RmsNormForward rms_norm_forward(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& weight,
                                double eps, const OutputQuant& quant);
// The same into given tensors (contiguous, the right shapes; out.residual only with a residual).
void rms_norm_forward_out(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& weight,
                          double eps, const OutputQuant& quant, RmsNormForward& out);

// h: the normalised input (x, or the residual sum); grad_h: the gradient reaching h from elsewhere (the
// residual stream), undefined if none.
RmsNormGrads rms_norm_backward(const torch::Tensor& grad_y, const torch::Tensor& grad_h, const torch::Tensor& h,
                               const torch::Tensor& weight, const torch::Tensor& rstd, const OutputQuant& quant,
                               bool weight_grad);
void rms_norm_backward_out(const torch::Tensor& grad_y, const torch::Tensor& grad_h, const torch::Tensor& h,
                           const torch::Tensor& weight, const torch::Tensor& rstd, const OutputQuant& quant,
                           RmsNormGrads& out);

// Whether the CUDA kernel takes rows of this tensor (float32/float16/bfloat16, K a multiple of 16, K up to
// 16384 bf16 elements). The CPU reference takes any K.
bool rms_norm_cuda_supports(const torch::Tensor& x);

}  // namespace qad::fused
