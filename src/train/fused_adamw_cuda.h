// What fused_adamw_cuda.cu needs and provides, kept free of the trainer's headers so that nvcc sees little.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "train/adamw_math.h"

namespace qad::train {

// One parameter's state. master, exp_avg, exp_avg_sq: FP32, contiguous, same numel; grad: FP32 or BF16, contiguous;
// param: the model's BF16 copy of master (contiguous), or undefined when master is the parameter itself.
struct AdamWTensors {
  torch::Tensor master, exp_avg, exp_avg_sq, grad, param;
  bool decay = false;
};

// Elements per chunk of the multi-tensor launches (and of the gradient norm's FP32 partial sums).
constexpr int64_t kNormChunk = 16384;

namespace detail {
// The CUDA launches (fused_adamw_cuda.cu); defined only where QAD_HAS_CUDA. Arguments are checked by the callers
// in fused_adamw.cc. previous_apply: undefined, or the flag that picks `if_previous_skipped` where it is 0.
void fused_adamw_cuda(const std::vector<AdamWTensors>& tensors, const AdamWScalars& s, const torch::Tensor& grad_scale,
                      const torch::Tensor& apply, const torch::Tensor& previous_apply,
                      const AdamWScalars& if_previous_skipped);
torch::Tensor grad_square_partials_cuda(const std::vector<torch::Tensor>& grads);
}  // namespace detail

}  // namespace qad::train
