// HF checkpoint <-> CausalLM: one table (hf_tensors) names every tensor of the checkpoint and the parameter
// it fills; loading and saving both walk it, so they cannot disagree.
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors_torch.h"
#include "model/causal_lm.h"
#include "model/weights.h"
#include "model/expert_layout.h"
#include "model/finite_check.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/torch_format.h"

namespace qad::model {
namespace fs = std::filesystem;

std::string dtype_config_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: fail("model dtype {} is not supported (float32, bfloat16, float16)", c10::toString(t));
  }
}

std::vector<std::pair<std::string, torch::Tensor>> CausalLMImpl::hf_tensors() const {
  // The module tree mirrors HF's, so the registered parameter paths are the HF names; lm_head's weight is
  // registered only when untied.
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

void load_hf_tensors(CausalLM& lm, const io::Checkpoint& ckpt, const fs::path& dir, torch::Device device,
                     torch::ScalarType dtype, const std::set<std::string>& handled) {
  const auto& config = lm->config();
  std::set<std::string> used;
  std::vector<std::string> missing;
  torch::NoGradGuard no_grad;
  for (auto& [name, param] : lm->hf_tensors()) {
    if (handled.count(name)) continue;
    // NemotronH: "backbone." as NVIDIA's checkpoints and transformers' save_pretrained write; a file written
    // from transformers' in-memory state says "model." (and stacks the experts).
    std::string file_name = name;
    if (config.hybrid && ckpt.find(name) == nullptr && name.starts_with("backbone.")) {
      const std::string alt = "model." + name.substr(9);
      std::string stacked;
      if (ckpt.find(alt) != nullptr || stacked_expert_weight(ckpt, alt, &stacked).defined()) file_name = alt;
    }
    const auto* entry = ckpt.find(file_name);
    torch::Tensor src;
    if (entry != nullptr) {
      used.insert(file_name);
      src = io::to_tensor(*entry);
    } else if (std::string stacked; (src = stacked_expert_weight(ckpt, file_name, &stacked)).defined()) {
      used.insert(stacked);  // experts stored stacked (expert_layout.h)
    } else {
      missing.push_back(name);
      continue;
    }
    QAD_CHECK(src.sizes() == param.sizes(), "{}: tensor '{}' has shape {} but config.json implies {}", dir.string(),
              name, shape_str(src.sizes()), shape_str(param.sizes()));
    QAD_CHECK(src.is_floating_point(), "{}: tensor '{}' is {}, expected a floating-point weight{}", dir.string(), name,
              c10::toString(src.scalar_type()),
              src.scalar_type() == torch::kUInt8 ? fmt::format(" (packed NVFP4 needs '{}_scale')", name) : "");
    // Zero-copy when the file already has the wanted dtype on CPU (the view keeps the mapping alive).
    param.set_data(src.to(device, dtype));
    QAD_CHECK(all_finite(param), "{}: tensor '{}' holds NaN or Inf values (as {}); the checkpoint is damaged or was "
              "saved from a diverged run: use an earlier checkpoint or re-export it", dir.string(), name,
              dtype_config_name(dtype));
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
    fail("{}: {} tensor(s) missing from the checkpoint: {}{}", dir.string(), missing.size(), list,
         missing.size() > 5 ? ", ..." : "");
  }
  std::vector<std::string> unexpected;
  for (const auto& name : ckpt.names()) {
    if (used.count(name) || handled.count(name)) continue;
    // transformers ignores these too: a duplicate tied head, and RoPE tables older exports stored.
    if (config.tie_word_embeddings && name == "lm_head.weight") continue;
    if (name.ends_with("rotary_emb.inv_freq")) continue;
    if (config.hybrid && name.starts_with("mtp.")) continue;  // NemotronH multi-token prediction: skipped as in transformers
    unexpected.push_back(name);
  }
  if (!unexpected.empty()) {
    fail("{}: {} tensor(s) in the checkpoint do not belong to a {} with this config: {}{}", dir.string(),
         unexpected.size(), config.architecture_name, unexpected.front(), unexpected.size() > 1 ? ", ..." : "");
  }
}

CausalLM CausalLM::load(const fs::path& dir, torch::Device device, torch::ScalarType dtype) {
  dtype_config_name(dtype);  // validates
  CausalLM lm(load_config(dir));
  load_hf_tensors(lm, io::Checkpoint::open(dir), dir, device, dtype);
  // Parameters the checkpoint does not hold (none today) still follow the requested device and dtype.
  lm->to(device, dtype);
  return lm;
}

void CausalLMImpl::save(const fs::path& dir, const SaveOptions& options) const {
  const auto tensors = hf_tensors();
  const auto dtype = model->embed_tokens->weight.scalar_type();
  const auto config = config_json_for_save(config_, dtype_config_name(dtype));
  write_directory_atomic(dir, [&](const fs::path& tmp) {
    write_file_atomic(tmp / "config.json", dump_json_nonfinite(config) + "\n");
    io::write_tensors_checkpoint(tmp, tensors, {.max_shard_bytes = options.max_shard_bytes});
  });
}

}  // namespace qad::model
