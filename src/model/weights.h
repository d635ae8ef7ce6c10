// Filling a CausalLM from an open HF checkpoint by the one name table (hf_tensors) that loading and saving
// share (weights.cc). CausalLM::load and quant::load_nvfp4 both load through it.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <set>
#include <string>

#include "io/safetensors.h"
#include "model/causal_lm.h"

namespace qad::model {

// Fills lm's parameters from `ckpt` by HF name, skipping `handled`: parameters the caller filled itself and
// checkpoint tensors it read (quant::load_nvfp4's NVFP4 weights and scales). Throws naming `dir` for a
// missing, misshapen or non-float tensor and for one that belongs to no parameter.
void load_hf_tensors(CausalLM& lm, const io::Checkpoint& ckpt, const std::filesystem::path& dir, torch::Device device,
                     torch::ScalarType dtype, const std::set<std::string>& handled = {});

}  // namespace qad::model
