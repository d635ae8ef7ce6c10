// The teacher's side of the distillation losses for one batch when it comes from a teacher cache (qad
// teacher-cache, docs/teacher_cache.md) instead of a teacher forward: its top-k logits (and logsumexp) for the KL and its
// hidden-state rows of the CKA tokens. The training step uses these in place of the teacher model.
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace qad::loss {

struct TeacherTargets {
  torch::Tensor top_logits;  // [B, T, k] the teacher's k largest logits per position, descending (any float dtype)
  torch::Tensor top_ids;     // int64 [B, T, k] their vocabulary ids
  torch::Tensor lse;         // FP32 [B, T] logsumexp of the teacher's logits over the full vocabulary at temperature
                             // 1 (loss::teacher_logsumexp): the tail KL's true teacher probabilities on S
  torch::Tensor cka_index;   // int64 [n]: the CKA tokens as rows of the flattened [B*T] batch (undefined: no CKA)
  std::vector<std::pair<std::string, torch::Tensor>> cka_hidden;  // layer name → [n, H], the teacher's rows there
};

}  // namespace qad::loss
