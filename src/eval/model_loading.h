// Loading any model qad can evaluate through one function: HF checkpoints (BF16/FP32 safetensors), NVFP4
// exports (quant::load_nvfp4) and qad training checkpoints (model/ + quantizer state, or a run directory's
// latest) (docs/eval.md "Models"). Also the `--model` spec "[LABEL=][fq:]DIR".
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "model/causal_lm.h"

namespace qad::eval {

enum class CheckpointKind { kHuggingFace, kNvfp4Export, kTrainingCheckpoint, kUnknown };

// What is in `dir`, from its files only (no weights are read).
CheckpointKind detect_checkpoint(const std::filesystem::path& dir);

// Loads `dir` as a CausalLM in `dtype` on `device`, in eval mode. Throws qad::Error naming the directory
// and saying what to do for formats this build cannot read.
model::CausalLM load_any_model(const std::filesystem::path& dir, torch::Device device, torch::ScalarType dtype);

// A `--model` argument: "DIR", "LABEL=DIR", "fq:DIR" or "LABEL=fq:DIR". fq: = NVFP4 W4A4 fake quantization
// with dynamic per-tensor amax (apply_dynamic_fake_quant) on top of the loaded checkpoint.
struct ModelSpec {
  std::string label;  // given, else "DIR" (+ " (fq)")
  std::filesystem::path dir;
  bool fake_quant = false;
};
ModelSpec parse_model_spec(const std::string& spec);

// The loaded model of a spec (fake quantization applied when asked).
model::CausalLM load_model_spec(const ModelSpec& spec, torch::Device device, torch::ScalarType dtype);

}  // namespace qad::eval
