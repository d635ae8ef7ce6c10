// Batch → LibTorch tensors. Kept apart from the loader (own target, qad_data_torch) so that qad_data
// stays free of torch and quick to build.
#pragma once
#include <torch/torch.h>

#include "data/loader.h"

namespace qad::data {

struct BatchTensors {
  torch::Tensor input_ids, targets;  // int64 [B, T]
  torch::Tensor loss_mask;           // float32 [B, T], 1 where the target is trained on
  torch::Tensor attention_mask;      // bool [B, T], true on real input positions
};

BatchTensors to_tensors(const Batch& batch, const torch::Device& device = torch::kCPU);

}  // namespace qad::data
