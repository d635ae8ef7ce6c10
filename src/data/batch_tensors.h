// Batch → LibTorch tensors. Kept apart from the loader (own target, qad_data_torch) so that qad_data
// stays free of torch and quick to build.
#pragma once
#include <torch/torch.h>

#include <memory>

#include "data/loader.h"

namespace qad::loss {
struct TeacherTargets;  // loss/teacher_targets.h
}

namespace qad::data {

struct BatchTensors {
  torch::Tensor input_ids, targets;  // int64 [B, T]
  torch::Tensor loss_mask;           // float32 [B, T], 1 where the target is trained on
  torch::Tensor attention_mask;      // bool [B, T], true on real input positions
  // Set when the teacher's outputs for these rows come from a teacher cache (train/teacher_cache.h): the step
  // then needs no teacher model.
  std::shared_ptr<const loss::TeacherTargets> teacher;
};

BatchTensors to_tensors(const Batch& batch, const torch::Device& device = torch::kCPU);

}  // namespace qad::data
