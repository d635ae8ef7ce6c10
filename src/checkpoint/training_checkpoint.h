// Training checkpoints: RUN_DIR/checkpoints/step-NNNNNNNN/ holds the student (an HF directory, model/),
// the optimizer (FP32 master weights and moments), the quantizer state, and trainer_state.json (step,
// tokens, data position, RNG scheme, configuration). Each directory appears atomically; `latest` names the
// newest complete one. Written by rank 0 only. Layout in docs/train.md. The writer and every reader of the
// format live here: the trainer's resume (load_checkpoint) and the student as a model (load_training_student,
// which checkpoint/load.h uses for `qad eval`, `generate`, `cka` and a distill teacher or student).
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "io/safetensors_torch.h"
#include "model/causal_lm.h"

namespace qad::checkpoint {

using io::NamedTensors;

struct TrainerState {
  int64_t step = 0;        // optimizer steps done (the next step is `step`)
  int64_t tokens = 0;      // loss tokens trained on so far
  int64_t adam_steps = 0;  // updates made (skipped steps do not count)
  int64_t bad_streak = 0;  // consecutive non-finite steps before this point
  double elapsed_s = 0;    // training time so far
  nlohmann::json loader;   // data::LoaderState::to_json()
  nlohmann::json rng;      // how step randomness is derived (seed, scheme)
  nlohmann::json config;   // TrainConfig::to_json() of the run
  nlohmann::json to_json() const;
  static TrainerState from_json(const nlohmann::json& j, const std::string& label);
};

struct QuantizerSnapshot {  // what train/student.h's quantizer_state returns
  NamedTensors tensors;
  nlohmann::json meta = nlohmann::json::object();
};

// Writes checkpoints/step-<state.step>/ and points `latest` at it; keeps the newest `keep` directories.
// optimizer_state: Optimizer::state() (gathered on rank 0 when sharded).
// Returns the directory written.
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, const TrainerState& state,
                                      const model::CausalLM& student, const NamedTensors& optimizer_state,
                                      const QuantizerSnapshot& quant, int64_t keep);

// The newest complete checkpoint of a run (from `latest`, else the highest step directory), if any.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir);

struct LoadedCheckpoint {
  std::filesystem::path dir;
  TrainerState state;
  NamedTensors model, optimizer;
  QuantizerSnapshot quant;
};
LoadedCheckpoint load_checkpoint(const std::filesystem::path& dir);

// The training checkpoint `dir` (a step-N directory, or a run directory: its latest checkpoint) as a model in
// eval mode: model/ (an HF directory) plus, for a quantized student, its quantizer state (every amax, restored
// as the trainer restores it, not re-calibrated). Throws qad::Error naming what is missing.
model::CausalLM load_training_student(const std::filesystem::path& dir, torch::Device device, torch::ScalarType dtype);

// `dir` itself when it holds trainer_state.json, else the run directory's latest checkpoint; throws otherwise.
std::filesystem::path resolve_training_checkpoint(const std::filesystem::path& dir);

// Copies tensors into the model's parameters by HF name; throws naming a missing or misshapen tensor.
void load_model_tensors(model::CausalLM& lm, const NamedTensors& tensors, const std::string& label);

}  // namespace qad::checkpoint
