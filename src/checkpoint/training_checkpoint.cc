// Training checkpoints: writer and readers (see training_checkpoint.h).
#include "checkpoint/training_checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "quant/quantize_model.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/remove_tree.h"
#include "util/torch_format.h"

namespace qad::checkpoint {
namespace fs = std::filesystem;
namespace {

nlohmann::json read_json_or_null(const fs::path& file) {
  if (!fs::exists(file)) return nullptr;
  auto j = nlohmann::json::parse(read_file(file), nullptr, false);
  return j.is_discarded() ? nlohmann::json(nullptr) : j;  // the loader that owns the file reports it properly
}

}  // namespace

nlohmann::json TrainerState::to_json() const {
  return {{"format", "qad-train-checkpoint"}, {"version", 1}, {"step", step}, {"tokens", tokens},
          {"adam_steps", adam_steps}, {"bad_streak", bad_streak}, {"elapsed_s", elapsed_s}, {"loader", loader},
          {"rng", rng}, {"config", config}};
}

TrainerState TrainerState::from_json(const nlohmann::json& j, const std::string& label) {
  try {
    QAD_CHECK(j.value("format", "") == "qad-train-checkpoint", "not a qad training checkpoint");
    TrainerState s;
    s.step = j.at("step").get<int64_t>();
    s.tokens = j.at("tokens").get<int64_t>();
    s.adam_steps = j.at("adam_steps").get<int64_t>();
    s.bad_streak = j.value("bad_streak", int64_t{0});
    s.elapsed_s = j.value("elapsed_s", 0.0);
    s.loader = j.at("loader");
    s.rng = j.value("rng", nlohmann::json::object());
    s.config = j.value("config", nlohmann::json::object());
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad trainer state: {}", label, e.what());
  } catch (const Error& e) {
    fail("{}: {}", label, e.what());
  }
}

fs::path save_checkpoint(const fs::path& run_dir, const TrainerState& state, const model::CausalLM& student,
                         const NamedTensors& optimizer_state, const QuantizerSnapshot& quant, int64_t keep) {
  const fs::path root = run_dir / "checkpoints";
  fs::create_directories(root);
  const std::string name = fmt::format("step-{:08d}", state.step);
  const fs::path dir = root / name;
  write_directory_atomic(dir, [&](const fs::path& tmp) {
    student->save(tmp / "model", {.max_shard_bytes = 0});
    io::write_tensors(tmp / "optimizer.safetensors", optimizer_state);
    if (!quant.tensors.empty()) io::write_tensors(tmp / "quantizer.safetensors", quant.tensors);
    write_file_atomic(tmp / "quantizer.json", quant.meta.dump(2) + "\n");
    write_file_atomic(tmp / "trainer_state.json", state.to_json().dump(2) + "\n");
  });
  write_file_atomic(root / "latest", name + "\n");
  // Keep the newest `keep` checkpoints.
  std::vector<fs::path> all;
  for (const auto& e : fs::directory_iterator(root)) {
    const auto n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0) all.push_back(e.path());
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) {
    if (all[i] != dir) ::qad::remove_tree(all[i]);
  }
  return dir;
}

std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  const fs::path root = run_dir / "checkpoints";
  if (!fs::is_directory(root)) return std::nullopt;
  if (fs::exists(root / "latest")) {
    std::string n = read_file(root / "latest");
    while (!n.empty() && (n.back() == '\n' || n.back() == '\r')) n.pop_back();
    if (fs::exists(root / n / "trainer_state.json")) return root / n;
  }
  std::optional<fs::path> best;
  for (const auto& e : fs::directory_iterator(root)) {
    const auto n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0 && fs::exists(e.path() / "trainer_state.json")) {
      if (!best || e.path() > *best) best = e.path();
    }
  }
  return best;
}

LoadedCheckpoint load_checkpoint(const fs::path& dir) {
  LoadedCheckpoint c;
  c.dir = dir;
  const auto state_file = dir / "trainer_state.json";
  auto j = nlohmann::json::parse(read_file(state_file), nullptr, false);
  QAD_CHECK(!j.is_discarded(), "{}: not valid JSON", state_file.string());
  c.state = TrainerState::from_json(j, state_file.string());
  c.model = io::read_tensors(dir / "model");
  c.optimizer = io::read_tensors(dir / "optimizer.safetensors");
  if (fs::exists(dir / "quantizer.safetensors")) c.quant.tensors = io::read_tensors(dir / "quantizer.safetensors");
  if (fs::exists(dir / "quantizer.json")) c.quant.meta = nlohmann::json::parse(read_file(dir / "quantizer.json"));
  return c;
}

fs::path resolve_training_checkpoint(const fs::path& dir) {
  if (fs::exists(dir / "trainer_state.json")) return dir;
  QAD_CHECK(fs::exists(dir / "checkpoints" / "latest"), "{}: neither a training checkpoint (trainer_state.json) nor "
            "a run directory (checkpoints/latest)", dir.string());
  auto name = read_file(dir / "checkpoints" / "latest");
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
  QAD_CHECK(!name.empty() && name.find('/') == std::string::npos, "{}: checkpoints/latest does not name a "
            "checkpoint directory", dir.string());
  return dir / "checkpoints" / name;
}

model::CausalLM load_training_student(const fs::path& path, torch::Device device, torch::ScalarType dtype) {
  const fs::path dir = resolve_training_checkpoint(path);
  QAD_CHECK(fs::exists(dir / "model" / "config.json"), "training checkpoint {} has no model/config.json (the student "
            "as an HF directory); is it complete?", dir.string());
  auto lm = model::CausalLM::load(dir / "model", device, dtype);
  const auto meta = read_json_or_null(dir / "quantizer.json");
  const bool quantized = !meta.is_object() || !meta.contains("quantized") || !meta["quantized"].is_boolean() ||
                         meta["quantized"].get<bool>();
  if (quantized && fs::exists(dir / "quantizer.safetensors")) {
    // The run's own quantization settings (quantize_inputs, ste) decide how the restored hooks compute.
    quant::QuantConfig qc;
    const auto state = read_json_or_null(dir / "trainer_state.json");
    if (state.is_object() && state.contains("config") && state["config"].contains("quant") &&
        state["config"]["quant"].contains("options")) {
      qc = quant::quant_config_from_json(state["config"]["quant"]["options"], (dir / "trainer_state.json").string());
    }
    quant::load_quantizer_state(lm, io::read_tensors(dir / "quantizer.safetensors"), qc);
  }
  lm->eval();
  return lm;
}

void load_model_tensors(model::CausalLM& lm, const NamedTensors& tensors, const std::string& label) {
  torch::NoGradGuard ng;
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  for (auto& [name, p] : lm->hf_tensors()) {
    auto it = by_name.find(name);
    QAD_CHECK(it != by_name.end(), "{}: tensor '{}' is missing", label, name);
    QAD_CHECK(it->second.sizes() == p.sizes(), "{}: '{}' has shape {}, the model needs {}", label, name,
              shape_str(it->second.sizes()), shape_str(p.sizes()));
    auto dst = p;
    dst.copy_(it->second);
  }
}

}  // namespace qad::checkpoint
