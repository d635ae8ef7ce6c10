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

// What the host knew of a batch's masks and labels when the tensors were made: the training step decides its
// attention path, checks its labels and counts its tokens from these instead of reading the device at the start of
// every step (each read waits for the GPU's queue to drain). They describe the very tensors they were taken from
// (kept here as handles and compared by identity): once a field holds another tensor, the helpers below read the
// device again. Code that writes into a batch's tensors in place must reset them (`host = {}`).
struct HostFacts {
  bool known = false;                                // false: no facts (a batch built field by field)
  torch::Tensor targets, loss_mask, attention_mask;  // the tensors described
  bool padded = false;                               // some attention_mask position is false
  int64_t labels = 0;                                // positions the loss reads: target != -100, loss_mask != 0
  int64_t min_label = 0, max_label = 0;              // over those positions (when labels > 0)
  int64_t loss_tokens = 0;                           // loss_mask.sum(), as an integer
};

struct BatchTensors {
  torch::Tensor input_ids, targets;  // int64 [B, T]
  torch::Tensor loss_mask;           // float32 [B, T], 1 where the target is trained on
  torch::Tensor attention_mask;      // bool [B, T], true on real input positions
  // Set when the teacher's outputs for these rows come from a teacher cache (train/teacher_cache.h): the step
  // then needs no teacher model.
  std::shared_ptr<const loss::TeacherTargets> teacher;
  HostFacts host;  // set by to_tensors (or read_host_facts)
};

// The tensors on `device`, with their host facts taken from the batch before the upload.
BatchTensors to_tensors(const Batch& batch, const torch::Device& device = torch::kCPU);

// b's facts read from its tensors as they are now (one read of each from the device), for batches made without
// to_tensors (benchmarks build theirs on the device).
HostFacts read_host_facts(const BatchTensors& b);

// Whether some position of b's attention mask is false (the step then takes the masked attention path): from
// b.host while it describes b's mask, otherwise read from the device. False when b has no mask.
bool has_padding(const BatchTensors& b);

// Whether rows [first, first + count) of the batch have a padded position (the batch's own host bytes).
bool has_padding(const Batch& b, int64_t first, int64_t count);

// true when b.host shows every label the loss reads (target != -100 where loss_mask != 0) inside [0, vocab); false
// when it shows one outside, or has no facts for b's tensors: the caller then checks on the device, which names
// the label and its position.
bool labels_known_in_range(const BatchTensors& b, int64_t vocab);

// The positions whose label the loss reads, one definition for the host facts and the device check: target != -100
// and, when there is a loss mask, loss_mask != 0. bool, of targets' shape and on its device.
torch::Tensor labels_read(const torch::Tensor& targets, const torch::Tensor& loss_mask);

// loss_mask.sum() as an integer: from b.host while it describes b's loss mask, otherwise read from the device.
int64_t loss_tokens(const BatchTensors& b);

}  // namespace qad::data
