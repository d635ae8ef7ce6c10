// The fused ops as autograd functions: what the decoder (src/model/layers.cc) calls on CUDA. Each saves only
// what its backward reads (its inputs and the FP32 rstd) and runs the fused backward; gradients go to every
// tensor input that requires them. The quantizer's amax is a fixed input (no gradient), as in
// nvfp4::fake_quantize_ste.
#pragma once
#include <torch/torch.h>

#include <utility>

#include "fused/output_quant.h"

namespace qad::fused {

// fq(RMSNorm(x) * weight), fq = NVFP4 fake quantization when `quant` is enabled (identity otherwise).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps, const OutputQuant& quant = {});

// (h, fq(RMSNorm(h) * weight)) with h = x + residual: the residual stream and the normed branch input.
std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                                     const torch::Tensor& weight, double eps,
                                                     const OutputQuant& quant = {});

// fq(silu(gate) * up).
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& quant = {});

// RoPE of x [B, T, H, D] (after a per-head RMSNorm when norm_weight is defined), returned as [B, H, T, D].
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps, const torch::Tensor& cos,
                   const torch::Tensor& sin);

}  // namespace qad::fused
