// The one parser of --device and --dtype for every command (and run.device in recipes): the same choices
// and the same one-line errors everywhere.
#pragma once
#include <torch/torch.h>

#include <string>
#include <string_view>

namespace qad::model {

// "auto" (CUDA when visible, else CPU), "cpu", "cuda" or "cuda:N". Throws qad::Error naming `flag` and
// listing the valid devices for anything else, and for CUDA on a machine without a visible CUDA device.
torch::Device parse_device(const std::string& name, std::string_view flag = "--device");

// True when `name` is one of the device spellings parse_device accepts (no CUDA check): for config validation.
bool is_device_name(const std::string& name);

// "float32", "bfloat16", "float16" (the config.json names) or "auto" (= auto_dtype, e.g.
// CausalLM::default_dtype(device) or the checkpoint's own dtype). Throws qad::Error naming `flag` otherwise.
torch::ScalarType parse_dtype(const std::string& name, torch::ScalarType auto_dtype, std::string_view flag = "--dtype");

}  // namespace qad::model
