// load_any_model: the one place that knows checkpoint formats apart (docs/eval.md "Models").
#include "eval/model_loading.h"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/dynamic_fake_quant.h"
#include "quant/quantize_model.h"
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

bool is_nvfp4_quant_config(const nlohmann::json& j) {
  if (!j.is_object()) return false;
  auto algo_is_nvfp4 = [](const nlohmann::json& o) {
    return o.is_object() && o.contains("quant_algo") && o["quant_algo"].is_string() &&
           o["quant_algo"].get<std::string>() == "NVFP4";
  };
  return algo_is_nvfp4(j) || (j.contains("quantization") && algo_is_nvfp4(j["quantization"]));
}

}  // namespace

CheckpointKind detect_checkpoint(const fs::path& dir) {
  if (!fs::is_directory(dir)) return CheckpointKind::kUnknown;
  if (is_nvfp4_quant_config(read_json_or_null(dir / "hf_quant_config.json")) || quant::is_nvfp4_checkpoint(dir)) {
    return CheckpointKind::kNvfp4Export;
  }
  auto config = read_json_or_null(dir / "config.json");
  if (config.is_object() && config.contains("quantization_config") &&
      is_nvfp4_quant_config(config["quantization_config"])) {
    return CheckpointKind::kNvfp4Export;
  }
  if (fs::exists(dir / "config.json")) return CheckpointKind::kHuggingFace;
  // A qad training checkpoint (the trainer's format is not fixed yet): optimizer/trainer state files.
  for (const char* marker : {"trainer_state.json", "optimizer.safetensors", "train_state.json", "checkpoint.json"}) {
    if (fs::exists(dir / marker)) return CheckpointKind::kTrainingCheckpoint;
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
      fail("model {}: a qad training checkpoint; evaluating training checkpoints directly is not supported yet. "
           "Export it to an HF directory first (config.json + safetensors) and evaluate that", dir.string());
    case CheckpointKind::kUnknown:
      break;
  }
  fail("model {}: no config.json; not an HF checkpoint, an NVFP4 export or a training checkpoint", dir.string());
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
