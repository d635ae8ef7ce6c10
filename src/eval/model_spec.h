// The `--model` argument of `qad eval` and `qad cka`: "[LABEL=][fq:]DIR", where DIR is any checkpoint kind
// (checkpoint/load.h) and fq: adds NVFP4 W4A4 fake quantization with dynamic per-tensor amax.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "model/causal_lm.h"

namespace qad::eval {

// "DIR", "LABEL=DIR", "fq:DIR" or "LABEL=fq:DIR". fq: = apply_dynamic_fake_quant on top of the loaded checkpoint.
struct ModelSpec {
  std::string label;  // given, else "DIR" (+ " (fq)")
  std::filesystem::path dir;
  bool fake_quant = false;
};
ModelSpec parse_model_spec(const std::string& spec);

// The loaded model of a spec (checkpoint::load_model; fake quantization applied when asked).
model::CausalLM load_model_spec(const ModelSpec& spec, torch::Device device, torch::ScalarType dtype);

}  // namespace qad::eval
