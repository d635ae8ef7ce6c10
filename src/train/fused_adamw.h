// Multi-tensor AdamW: one pass over every tensor of the model updates the FP32 master weights and both moments
// and writes the model's BF16 copy, with the gradient-clipping factor and the non-finite skip read from device
// tensors (no host synchronisation); and the global gradient norm in one multi-tensor pass. The CUDA kernels
// (fused_adamw_cuda.cu) and the plain C++ reference here compute identical bits (adamw_math.h); AdamW uses them
// on CUDA automatically (optimizer.h).
#pragma once
#include <torch/torch.h>

#include <optional>
#include <vector>

#include "train/adamw_math.h"
#include "train/config.h"
#include "train/fused_adamw_cuda.h"

namespace qad::train {

AdamWScalars adamw_scalars(double lr, const OptimConfig& o, int64_t t);

// True where fused_adamw_ takes these tensors (dtypes, layout, one device; CUDA needs the kernels compiled in).
bool fused_adamw_supports(const AdamWTensors& t);

// An update queued before the previous step's values were read (the trainer overlaps step N's read with step
// N+1's work, train/step.h): its step count, and so its bias corrections, depend on whether that step was applied.
// `s` holds the scalars for "applied"; where `previous_apply` (FP32 0-dim on the tensors' device: the previous
// step's apply flag) is 0, the update uses `if_skipped` instead, chosen on the device.
struct PreviousStep {
  torch::Tensor previous_apply;
  AdamWScalars if_skipped;
};

// The choice for an update counted as step t (its previous step counted as applied), or none where previous_apply is
// undefined: with the previous step skipped, this one is step t - 1.
std::optional<PreviousStep> previous_step(double lr, const OptimConfig& o, int64_t t,
                                          const torch::Tensor& previous_apply);

// grad_scale: FP32 0-dim on the tensors' device, multiplies every gradient (the clipping factor, or 1).
// apply: FP32 0-dim on that device; where it is 0, nothing is written at all (a skipped step).
// previous: null, or the choice above. CUDA tensors go to the kernel; CPU tensors to fused_adamw_reference_.
void fused_adamw_(const std::vector<AdamWTensors>& tensors, const AdamWScalars& s, const torch::Tensor& grad_scale,
                  const torch::Tensor& apply, const PreviousStep* previous = nullptr);
void fused_adamw_reference_(const std::vector<AdamWTensors>& tensors, const AdamWScalars& s,
                            const torch::Tensor& grad_scale, const torch::Tensor& apply,
                            const PreviousStep* previous = nullptr);

// sum over tensors and elements of float(g)^2: FP32 partial sums over fixed chunks of kNormChunk elements, summed
// in FP64 in a fixed order (deterministic). Returns an FP64 0-dim tensor on the grads' device. Empty list: 0 on CPU.
torch::Tensor grad_square_sum(const std::vector<torch::Tensor>& grads);
torch::Tensor grad_square_sum_reference(const std::vector<torch::Tensor>& grads);

}  // namespace qad::train
