// The one place that tells checkpoint kinds apart and loads any of them as a CausalLM: HF checkpoints
// (BF16/FP32/FP16 safetensors), NVFP4 exports (ModelOpt unified layout: quant::load_nvfp4), and qad training
// checkpoints (a step-N directory or a run directory: its latest; training_checkpoint.h). Every command that
// reads a model (eval, cka, generate, quantize, distill's teacher and --student, the demo) goes through here
// (docs/eval.md "Models"). Each format's reader stays next to its writer; this file only dispatches.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "model/causal_lm.h"

namespace qad::checkpoint {

enum class Kind { kHuggingFace, kNvfp4Export, kTrainingCheckpoint, kUnknown };

// What is in `dir`, from its files only (no weights are read).
Kind detect(const std::filesystem::path& dir);
std::string kind_name(Kind kind);  // "HF checkpoint", "NVFP4 export", "training checkpoint", "unknown"

// Loads `dir` (any kind) as a CausalLM in `dtype` on `device`, in eval mode. An NVFP4 export loads with its
// weights dequantized (exact) and inputs fake-quantized with the stored scales, as the engines compute; a
// quantized training checkpoint with its fake-quant hooks restored. Throws qad::Error naming the directory
// and saying what it expected otherwise.
model::CausalLM load_model(const std::filesystem::path& dir, torch::Device device, torch::ScalarType dtype);

// The directory holding the model's config.json and tokenizer files: `dir` itself for HF checkpoints and
// NVFP4 exports, the checkpoint's model/ for a training checkpoint (a run directory's latest).
std::filesystem::path model_dir(const std::filesystem::path& dir);

// The directory holding the model's tokenizer.json: `dir` itself, except for a training checkpoint (which
// stores no tokenizer: the student shares its teacher's), where it is the tokenizer directory of the run's
// teacher (trainer_state.json's run.teacher), else model_dir(dir).
std::filesystem::path tokenizer_dir(const std::filesystem::path& dir);

}  // namespace qad::checkpoint
