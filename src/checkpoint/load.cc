// Checkpoint kinds and load_model (see load.h).
#include "checkpoint/load.h"

#include <nlohmann/json.hpp>

#include "checkpoint/training_checkpoint.h"
#include "quant/quantize_model.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::checkpoint {
namespace fs = std::filesystem;

Kind detect(const fs::path& dir) {
  if (!fs::is_directory(dir)) return Kind::kUnknown;
  // hf_quant_config.json, or config.json's modelopt quantization_config, with quant_algo NVFP4.
  if (quant::is_nvfp4_checkpoint(dir)) return Kind::kNvfp4Export;
  if (fs::exists(dir / "config.json")) return Kind::kHuggingFace;
  // A qad training checkpoint (docs/train.md: checkpoints/step-N/{model/, quantizer.*, trainer_state.json}),
  // or a run directory whose checkpoints/latest names one.
  if (fs::exists(dir / "trainer_state.json") || fs::exists(dir / "checkpoints" / "latest")) {
    return Kind::kTrainingCheckpoint;
  }
  return Kind::kUnknown;
}

std::string kind_name(Kind kind) {
  switch (kind) {
    case Kind::kHuggingFace: return "HF checkpoint";
    case Kind::kNvfp4Export: return "NVFP4 export";
    case Kind::kTrainingCheckpoint: return "training checkpoint";
    case Kind::kUnknown: break;
  }
  return "unknown";
}

model::CausalLM load_model(const fs::path& dir, torch::Device device, torch::ScalarType dtype) {
  QAD_CHECK(fs::is_directory(dir), "model {}: no such directory (give an HF checkpoint directory with config.json "
            "and safetensors, an NVFP4 export, a training checkpoint or a run directory)", dir.string());
  model::CausalLM lm{nullptr};
  switch (detect(dir)) {
    case Kind::kHuggingFace:
      lm = model::CausalLM::load(dir, device, dtype);
      break;
    case Kind::kNvfp4Export:
      lm = quant::load_nvfp4(dir, device, dtype);
      break;
    case Kind::kTrainingCheckpoint:
      lm = load_training_student(dir, device, dtype);
      break;
    case Kind::kUnknown:
      fail("model {}: no config.json, trainer_state.json or checkpoints/latest; not an HF checkpoint, an NVFP4 "
           "export, a training checkpoint or a run directory", dir.string());
  }
  lm->eval();
  return lm;
}

fs::path model_dir(const fs::path& dir) {
  return detect(dir) == Kind::kTrainingCheckpoint ? resolve_training_checkpoint(dir) / "model" : dir;
}

fs::path tokenizer_dir(const fs::path& dir) {
  if (detect(dir) != Kind::kTrainingCheckpoint) return dir;
  const auto ckpt = resolve_training_checkpoint(dir);
  const auto state = nlohmann::json::parse(read_file(ckpt / "trainer_state.json"), nullptr, false);
  if (!state.is_discarded() && state.contains("config") && state["config"].contains("run") &&
      state["config"]["run"].contains("teacher") && state["config"]["run"]["teacher"].is_string()) {
    const fs::path teacher = state["config"]["run"]["teacher"].get<std::string>();
    if (fs::exists(teacher) && fs::canonical(teacher) != fs::canonical(dir)) return tokenizer_dir(teacher);
  }
  return ckpt / "model";
}

}  // namespace qad::checkpoint
