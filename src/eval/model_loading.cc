// load_any_model: the one place that knows checkpoint formats apart (docs/eval.md "Models").
#include "eval/model_loading.h"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/dynamic_fake_quant.h"
#include "io/safetensors_torch.h"
#include "quant/quantize_model.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::eval {
namespace {

namespace fs = std::filesystem;

nlohmann::json read_json_or_null(const fs::path& file) {
  std::ifstream in(file);
  if (!in) return nullptr;
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return nullptr;  // the loader that owns the file reports it properly
  }
}

std::string_view strip_newline(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.remove_suffix(1);
  return s;
}

// The student of a training checkpoint: model/ (an HF directory) plus, for a quantized student, its quantizer
// state (every amax, restored as the trainer restores it, not re-calibrated).
model::CausalLM load_training_checkpoint(fs::path dir, torch::Device device, torch::ScalarType dtype) {
  if (!fs::exists(dir / "trainer_state.json") && fs::exists(dir / "checkpoints" / "latest")) {
    const auto name = std::string(strip_newline(read_file(dir / "checkpoints" / "latest")));
    QAD_CHECK(!name.empty() && name.find('/') == std::string::npos, "{}: checkpoints/latest does not name a "
              "checkpoint directory", dir.string());
    dir = dir / "checkpoints" / name;
  }
  QAD_CHECK(fs::exists(dir / "model" / "config.json"), "training checkpoint {} has no model/config.json (the student "
            "as an HF directory); is it complete?", dir.string());
  auto lm = model::CausalLM::load(dir / "model", device, dtype);
  auto meta = read_json_or_null(dir / "quantizer.json");
  const bool quantized = !meta.is_object() || !meta.contains("quantized") || !meta["quantized"].is_boolean() ||
                         meta["quantized"].get<bool>();
  if (quantized && fs::exists(dir / "quantizer.safetensors")) {
    quant::QuantConfig qc;
    auto state = read_json_or_null(dir / "trainer_state.json");
    if (state.is_object() && state.contains("config") && state["config"].contains("quant") &&
        state["config"]["quant"].contains("quantize_inputs") && state["config"]["quant"]["quantize_inputs"].is_boolean()) {
      qc.quantize_inputs = state["config"]["quant"]["quantize_inputs"].get<bool>();
    }
    quant::load_quantizer_state(lm, io::read_tensors(dir / "quantizer.safetensors"), qc);
  }
  lm->eval();
  return lm;
}

}  // namespace

CheckpointKind detect_checkpoint(const fs::path& dir) {
  if (!fs::is_directory(dir)) return CheckpointKind::kUnknown;
  // hf_quant_config.json, or config.json's modelopt quantization_config, with quant_algo NVFP4.
  if (quant::is_nvfp4_checkpoint(dir)) return CheckpointKind::kNvfp4Export;
  if (fs::exists(dir / "config.json")) return CheckpointKind::kHuggingFace;
  // A qad training checkpoint (docs/train.md: checkpoints/step-N/{model/, quantizer.*, trainer_state.json}),
  // or a run directory whose checkpoints/latest names one.
  if (fs::exists(dir / "trainer_state.json") || fs::exists(dir / "checkpoints" / "latest")) {
    return CheckpointKind::kTrainingCheckpoint;
  }
  return CheckpointKind::kUnknown;
}

model::CausalLM load_any_model(const fs::path& dir, torch::Device device, torch::ScalarType dtype) {
  QAD_CHECK(fs::is_directory(dir), "model {}: no such directory (give an HF checkpoint directory with config.json "
            "and safetensors)", dir.string());
  switch (detect_checkpoint(dir)) {
    case CheckpointKind::kHuggingFace: {
      auto lm = model::CausalLM::load(dir, device, dtype);
      lm->eval();
      return lm;
    }
    case CheckpointKind::kNvfp4Export: {
      // Dequantized weights (exact) and input fake quantization with the stored input scales (docs/quant.md).
      auto lm = quant::load_nvfp4(dir, device, dtype);
      lm->eval();
      return lm;
    }
    case CheckpointKind::kTrainingCheckpoint:
      return load_training_checkpoint(dir, device, dtype);
    case CheckpointKind::kUnknown:
      break;
  }
  fail("model {}: no config.json, trainer_state.json or checkpoints/latest; not an HF checkpoint, an NVFP4 export, a "
       "training checkpoint or a run directory", dir.string());
}

ModelSpec parse_model_spec(const std::string& spec) {
  ModelSpec s;
  std::string rest = spec;
  if (auto eq = rest.find('='); eq != std::string::npos && rest.substr(0, eq).find('/') == std::string::npos) {
    s.label = rest.substr(0, eq);
    rest = rest.substr(eq + 1);
  }
  if (rest.rfind("fq:", 0) == 0) {
    s.fake_quant = true;
    rest = rest.substr(3);
  }
  QAD_CHECK(!rest.empty(), "--model '{}': no directory (syntax: [LABEL=][fq:]DIR)", spec);
  s.dir = rest;
  if (s.label.empty()) s.label = s.fake_quant ? rest + " (fq)" : rest;
  return s;
}

model::CausalLM load_model_spec(const ModelSpec& spec, torch::Device device, torch::ScalarType dtype) {
  auto lm = load_any_model(spec.dir, device, dtype);
  if (spec.fake_quant) apply_dynamic_fake_quant(lm);
  return lm;
}

}  // namespace qad::eval
