// The two on-disk layouts of expert weights (NemotronH: "<p>.experts.up_proj" [E, I, H] and down_proj stacked alone). Published Qwen3-MoE checkpoints, and transformers 5.17's
// save_pretrained, store one tensor per expert ("<p>.experts.<e>.gate_proj.weight", ...), which is qad's own
// layout (hf_tensors). transformers 5.x holds them stacked in memory ("<p>.experts.gate_up_proj" [E, 2I, H]
// with gate rows first, "<p>.experts.down_proj" [E, H, I]), and checkpoints written from that state carry
// the stacked names: loading accepts both.
#pragma once
#include <torch/torch.h>

#include <string>

#include "io/safetensors.h"

namespace qad::model {

// For a per-expert weight name the checkpoint lacks, its slice of the stacked tensor (a CPU view), with
// the stacked tensor's name in *stacked_name; undefined when `name` is no expert weight or the checkpoint
// has no stacked tensor for it.
torch::Tensor stacked_expert_weight(const io::Checkpoint& ckpt, const std::string& name, std::string* stacked_name);

}  // namespace qad::model
