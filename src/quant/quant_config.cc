// QuantConfig: reading it (util/config_fields.h), deciding which Linears it selects, and installing the hooks.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <set>

#include "nvfp4/quantize.h"
#include "quant/kv_quant.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "util/config_fields.h"
#include "util/error.h"

namespace qad::quant {
namespace {

bool any_match(const std::vector<std::string>& patterns, const std::string& name) {
  for (const auto& p : patterns) {
    if (glob_match(p, name)) return true;
  }
  return false;
}

struct Decision {
  bool quantize = false;
  bool inputs = true;
  bool fp8 = false;  // W8A8 FP8 instead of NVFP4 (then quantize and inputs are true)
};

// The NVFP4 decision (include, exclude, overrides); `fp8` says whether fp8_layers selects the module.
Decision decide(const QuantConfig& cfg, const std::string& name) {
  Decision d{any_match(cfg.include, name) && !any_match(cfg.exclude, name), cfg.quantize_inputs};
  for (const auto& ov : cfg.overrides) {
    if (!glob_match(ov.pattern, name)) continue;
    if (ov.quantize) d.quantize = *ov.quantize;
    if (ov.quantize_inputs) d.inputs = *ov.quantize_inputs;
  }
  d.fp8 = any_match(cfg.fp8_layers, name);
  return d;
}

Decision as_fp8() { return {true, true, true}; }

void warn(const std::string& msg) { fmt::print(stderr, "qad: warning: {}\n", msg); }

}  // namespace

CalibMethod parse_calib_method(const std::string& s) {
  if (s == "max") return CalibMethod::kMax;
  if (s == "mse") return CalibMethod::kMse;
  fail("calibration method '{}' is not one of max, mse", s);
}

nvfp4::StraightThrough parse_ste(const std::string& s) {
  if (s == "identity") return nvfp4::StraightThrough::kIdentity;
  if (s == "clipped") return nvfp4::StraightThrough::kClipped;
  fail("straight-through estimator '{}' is not one of identity, clipped", s);
}

void to_json(nlohmann::json& j, CalibMethod m) { j = m == CalibMethod::kMse ? "mse" : "max"; }
void from_json(const nlohmann::json& j, CalibMethod& m) { m = parse_calib_method(j.get<std::string>()); }

void to_json(nlohmann::json& j, MoeCalibration m) { j = m == MoeCalibration::kRouted ? "routed" : "all_experts"; }
void from_json(const nlohmann::json& j, MoeCalibration& m) {
  const auto s = j.get<std::string>();
  QAD_CHECK(s == "all_experts" || s == "routed", "MoE calibration '{}' is not one of all_experts, routed", s);
  m = s == "routed" ? MoeCalibration::kRouted : MoeCalibration::kAllExperts;
}

KvCacheQuant parse_kv_cache(const std::string& s) {
  if (s == "none") return KvCacheQuant::kNone;
  if (s == "fp8") return KvCacheQuant::kFp8;
  fail("KV cache quantization '{}' is not one of none, fp8", s);
}

void to_json(nlohmann::json& j, KvCacheQuant k) { j = k == KvCacheQuant::kFp8 ? "fp8" : "none"; }
void from_json(const nlohmann::json& j, KvCacheQuant& k) {
  QAD_CHECK(j.is_string(), "KV cache quantization must be none or fp8, got {}", j.dump());
  k = parse_kv_cache(j.get<std::string>());
}

BlockScales parse_block_scales(const std::string& s) {
  if (s == "dynamic") return BlockScales::kDynamic;
  if (s == "static_mse") return BlockScales::kStaticMse;
  fail("block scales '{}' is not one of dynamic, static_mse", s);
}

void to_json(nlohmann::json& j, BlockScales b) { j = b == BlockScales::kStaticMse ? "static_mse" : "dynamic"; }
void from_json(const nlohmann::json& j, BlockScales& b) {
  QAD_CHECK(j.is_string(), "block scales must be dynamic or static_mse, got {}", j.dump());
  b = parse_block_scales(j.get<std::string>());
}

void to_json(nlohmann::json& j, const ModuleOverride& o) {
  j = {{"pattern", o.pattern}};
  if (o.quantize) j["quantize"] = *o.quantize;
  if (o.quantize_inputs) j["quantize_inputs"] = *o.quantize_inputs;
}

void from_json(const nlohmann::json& j, ModuleOverride& o) {
  QAD_CHECK(j.is_object() && j.contains("pattern"), "every override is {{pattern, quantize, quantize_inputs}} with "
            "a 'pattern'");
  o = {};
  for (const auto& [k, v] : j.items()) {
    if (k == "pattern") {
      o.pattern = v.get<std::string>();
    } else if (k == "quantize") {
      o.quantize = v.get<bool>();
    } else if (k == "quantize_inputs") {
      o.quantize_inputs = v.get<bool>();
    } else {
      fail("unknown override key '{}' (pattern, quantize, quantize_inputs)", k);
    }
  }
}

QuantConfig quant_config_from_json(const nlohmann::json& j, const std::string& where) {
  QuantConfig c;
  if (j.is_null()) return c;
  config::merge_json(c, j, where);
  QAD_CHECK(c.calib_samples >= 0, "{}.calib_samples must be >= 0, got {}", where, c.calib_samples);
  QAD_CHECK(c.keep_blocks == "none" || c.keep_blocks == "attention" || c.keep_blocks == "attention_and_preceding_mamba",
            "{}.keep_blocks '{}' is not one of none, attention, attention_and_preceding_mamba", where, c.keep_blocks);
  return c;
}

std::vector<int64_t> kept_blocks(const model::ModelConfig& config, const std::string& keep_blocks) {
  std::vector<int64_t> out;
  if (keep_blocks == "none") return out;
  QAD_CHECK(keep_blocks == "attention" || keep_blocks == "attention_and_preceding_mamba",
            "keep_blocks '{}' is not one of none, attention, attention_and_preceding_mamba", keep_blocks);
  QAD_CHECK(config.hybrid.has_value(), "keep_blocks {} needs a hybrid model (NemotronH); {} has no block types",
            keep_blocks, config.architecture_name);
  using model::BlockType;
  const auto& blocks = config.hybrid->blocks;
  std::set<int64_t> keep;
  for (int64_t l = 0; l < static_cast<int64_t>(blocks.size()); ++l) {
    if (blocks[static_cast<size_t>(l)] != BlockType::kAttention) continue;
    keep.insert(l);
    if (keep_blocks != "attention_and_preceding_mamba") continue;
    // The nearest Mamba block before it (MoE / MLP blocks in between are skipped; another attention block stops).
    for (int64_t p = l - 1; p >= 0 && blocks[static_cast<size_t>(p)] != BlockType::kAttention; --p) {
      if (blocks[static_cast<size_t>(p)] == BlockType::kMamba) {
        keep.insert(p);
        break;
      }
    }
  }
  return {keep.begin(), keep.end()};
}

std::vector<std::string> apply_nvfp4(model::CausalLM& lm, const QuantConfig& cfg) {
  const auto linears = lm->linears();
  QAD_CHECK(!(cfg.kv_cache == KvCacheQuant::kFp8 && lm->config().hybrid),
            "kv_cache fp8 is not implemented for {} yet (its attention blocks are mixers); use kv_cache none",
            lm->config().architecture_name);
  std::vector<std::string> kept;  // "backbone.layers.N.mixer.*" of the blocks keep_blocks leaves in high precision
  for (int64_t b : kept_blocks(lm->config(), cfg.keep_blocks)) kept.push_back(fmt::format("backbone.layers.{}.mixer.*", b));
  std::map<std::string, Decision> chosen;  // module -> decision, only the selected ones
  std::map<std::string, Decision> nvfp4_choice;  // the decision without fp8_layers, for fused groups that fall back
  std::map<std::string, int64_t> in_features;
  for (auto l : linears) {
    const auto& name = l->name();
    in_features[name] = l->in_features();
    auto d = decide(cfg, name);
    // Blocks the hybrid recipe keeps (keep_blocks) stay in high precision: neither NVFP4 nor FP8.
    if (any_match(kept, name)) {
      d.quantize = false;
      d.fp8 = false;
    }
    const bool tied_head = name == "lm_head" && lm->config().tie_word_embeddings;
    if (d.fp8 && tied_head) {
      warn("lm_head: tied to the embeddings, which stay in high precision; not FP8");
      d.fp8 = false;
    }
    if (d.fp8) {
      nvfp4_choice[name] = d;
      chosen[name] = as_fp8();  // FP8 has per-tensor scales: any input size
      continue;
    }
    if (!d.quantize) continue;
    if (l->in_features() % 16 != 0) {
      warn(fmt::format("{}: input size {} is not a multiple of 16, which NVFP4 engines need; left unquantized "
                       "(listed in exclude_modules)", name, l->in_features()));
      continue;
    }
    if (name == "lm_head" && lm->config().tie_word_embeddings) {
      warn("lm_head: tied to the embeddings, which stay in high precision; left unquantized");
      continue;
    }
    chosen[name] = d;
  }
  // Engines fuse q/k/v and gate/up into one GEMM: a group is quantized whole or not at all.
  std::map<std::string, std::vector<std::string>> groups;
  for (auto l : linears) {
    if (auto g = fused_group(l->name()); !g.empty()) groups[g].push_back(l->name());
  }
  for (const auto& [g, members] : groups) {
    // One format per fused group (engines run it as one GEMM): partly FP8 falls back to the NVFP4 decision.
    size_t fp8 = 0;
    for (const auto& m : members) fp8 += chosen.count(m) && chosen.at(m).fp8;
    if (fp8 != 0 && fp8 != members.size()) {
      warn(fmt::format("{}: only part of this fused group ({}) is in fp8_layers; engines fuse it into one layer, so "
                       "none of it is FP8", g, fmt::join(members, ", ")));
      for (const auto& m : members) {
        auto it = chosen.find(m);
        if (it == chosen.end() || !it->second.fp8) continue;
        const auto d = nvfp4_choice.at(m);
        if (d.quantize && in_features.at(m) % 16 == 0) {
          it->second = {true, d.inputs, false};
        } else {
          chosen.erase(it);
        }
      }
    }
    size_t on = 0;
    for (const auto& m : members) on += chosen.count(m);
    if (on == 0 || on == members.size()) continue;
    warn(fmt::format("{}: only part of this fused group ({}) is selected; engines fuse it into one layer, so it is "
                     "left unquantized whole", g, fmt::join(members, ", ")));
    for (const auto& m : members) chosen.erase(m);
  }

  torch::NoGradGuard no_grad;
  std::vector<std::string> names;
  std::map<std::string, torch::Tensor> group_amax;
  for (auto l : linears) {
    auto it = chosen.find(l->name());
    if (it == chosen.end()) {
      if (nvfp4_hook(l) != nullptr) l->quant.reset();
      continue;
    }
    auto hook = std::make_shared<NvFp4LinearQuant>(l->name());
    hook->quantize_inputs = it->second.inputs;
    hook->ste = cfg.ste;
    hook->fp8 = it->second.fp8;
    hook->static_block_scales = !hook->fp8 && cfg.block_scales == BlockScales::kStaticMse;  // chosen by calibrate()
    hook->weight_amax = nvfp4::compute_amax(l->weight.detach()).cpu();
    if (auto g = fused_group(l->name()); !g.empty()) {
      auto& ga = group_amax[g];
      ga = ga.defined() ? torch::maximum(ga, hook->weight_amax) : hook->weight_amax;
    }
    l->quant = hook;
    names.push_back(l->name());
  }
  for (auto l : linears) {
    auto* h = nvfp4_hook(l);
    if (h == nullptr) continue;
    if (auto g = fused_group(l->name()); !g.empty()) h->weight_amax = group_amax.at(g).clone();
  }
  remove_kv_cache_quant(lm);
  if (cfg.kv_cache == KvCacheQuant::kFp8) {
    for (size_t i = 0; i < lm->model->layer_list.size(); ++i) {
      auto hook = std::make_shared<Fp8KvQuant>(fmt::format("model.layers.{}.self_attn", i));
      hook->ste = cfg.ste;
      lm->model->layer_list[i]->self_attn->kv_quant = hook;
    }
  }
  return names;
}

bool has_fp8_kv_cache(const model::CausalLM& lm) {
  for (auto* h : kv_hooks(lm)) {
    if (h != nullptr) return true;
  }
  return false;
}

void remove_kv_cache_quant(model::CausalLM& lm) {
  for (auto& layer : lm->model->layer_list) {
    if (kv_hook(layer->self_attn) != nullptr) layer->self_attn->kv_quant.reset();
  }
}

std::vector<std::string> quantized_modules(const model::CausalLM& lm) {
  std::vector<std::string> out;
  for (auto l : lm->linears()) {
    if (nvfp4_hook(l) != nullptr) out.push_back(l->name());
  }
  return out;
}

std::vector<std::string> unquantized_modules(const model::CausalLM& lm) {
  std::vector<std::string> out;
  for (auto l : lm->linears()) {
    if (nvfp4_hook(l) == nullptr) out.push_back(l->name());
  }
  return out;
}

void enable_weight_fake_quant(model::CausalLM& lm, bool on) {
  for (auto l : lm->linears()) {
    if (auto* h = nvfp4_hook(l)) h->quantize_weights = on;
  }
}

void use_dynamic_block_scales(model::CausalLM& lm) {
  for (auto l : lm->linears()) {
    if (auto* h = nvfp4_hook(l)) {
      h->static_block_scales = false;
      h->block_scale = torch::Tensor();
    }
  }
}

bool has_static_block_scales(const model::CausalLM& lm) {
  for (auto l : lm->linears()) {
    if (auto* h = nvfp4_hook(l); h != nullptr && h->static_block_scales) return true;
  }
  return false;
}

}  // namespace qad::quant

namespace qad::nvfp4 {
void to_json(nlohmann::json& j, StraightThrough s) { j = s == StraightThrough::kClipped ? "clipped" : "identity"; }
void from_json(const nlohmann::json& j, StraightThrough& s) { s = quant::parse_ste(j.get<std::string>()); }
}  // namespace qad::nvfp4
