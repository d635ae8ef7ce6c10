// SwiGLU, silu(gate) * up, fused with the NVFP4 fake quantization of its output (down_proj's input quantizer);
// forward and backward on the CPU (reference loops) and CUDA (kernels). The forward gives the bits of the unfused
// ops in the model dtype: silu in float rounded to the dtype, the product rounded to the dtype, then
// nvfp4::fake_quantize. The backward is autograd's through them with the quantizer's straight-through estimator.
#pragma once
#include <torch/torch.h>

#include <utility>

#include "fused/output_quant.h"

namespace qad::fused {

torch::Tensor swiglu_forward(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& quant);
void swiglu_forward_out(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& quant, torch::Tensor& y);

// (d loss / d gate, d loss / d up).
std::pair<torch::Tensor, torch::Tensor> swiglu_backward(const torch::Tensor& grad_y, const torch::Tensor& gate,
                                                        const torch::Tensor& up, const OutputQuant& quant);
void swiglu_backward_out(const torch::Tensor& grad_y, const torch::Tensor& gate, const torch::Tensor& up,
                         const OutputQuant& quant, torch::Tensor& grad_gate, torch::Tensor& grad_up);

// Whether the CUDA kernel takes this tensor (float32/float16/bfloat16, last dimension a multiple of 16).
bool swiglu_cuda_supports(const torch::Tensor& gate);

}  // namespace qad::fused
