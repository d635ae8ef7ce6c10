// QuantConfig: reading it from YAML, deciding which Linears it selects, and installing the hooks.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <set>

#include "nvfp4/quantize.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "util/error.h"

namespace qad::quant {
namespace {

bool any_match(const std::vector<std::string>& patterns, const std::string& name) {
  for (const auto& p : patterns) {
    if (glob_match(p, name)) return true;
  }
  return false;
}

std::vector<std::string> string_list(const YAML::Node& n, const std::string& key) {
  QAD_CHECK(n.IsSequence() || n.IsScalar(), "quant.{}: expected a list of globs", key);
  if (n.IsScalar()) return {n.as<std::string>()};
  std::vector<std::string> out;
  for (const auto& item : n) out.push_back(item.as<std::string>());
  return out;
}

struct Decision {
  bool quantize = false;
  bool inputs = true;
};

Decision decide(const QuantConfig& cfg, const std::string& name) {
  Decision d{any_match(cfg.include, name) && !any_match(cfg.exclude, name), cfg.quantize_inputs};
  for (const auto& ov : cfg.overrides) {
    if (!glob_match(ov.pattern, name)) continue;
    if (ov.quantize) d.quantize = *ov.quantize;
    if (ov.quantize_inputs) d.inputs = *ov.quantize_inputs;
  }
  return d;
}

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

QuantConfig quant_config_from_yaml(const YAML::Node& node) {
  QuantConfig c;
  if (!node || node.IsNull()) return c;
  QAD_CHECK(node.IsMap(), "quant: expected a mapping (include, exclude, ste, method, calib_samples, "
            "quantize_inputs, overrides)");
  try {
    for (const auto& kv : node) {
      const auto key = kv.first.as<std::string>();
      const auto& v = kv.second;
      if (key == "include") {
        c.include = string_list(v, key);
      } else if (key == "exclude") {
        c.exclude = string_list(v, key);
      } else if (key == "ste") {
        c.ste = parse_ste(v.as<std::string>());
      } else if (key == "method") {
        c.method = parse_calib_method(v.as<std::string>());
      } else if (key == "calib_samples") {
        c.calib_samples = v.as<int64_t>();
        QAD_CHECK(c.calib_samples > 0, "quant.calib_samples must be positive, got {}", c.calib_samples);
      } else if (key == "quantize_inputs") {
        c.quantize_inputs = v.as<bool>();
      } else if (key == "moe_calibration") {
        const auto m = v.as<std::string>();
        QAD_CHECK(m == "all_experts" || m == "routed", "quant.moe_calibration: '{}' is not one of all_experts, routed",
                  m);
        c.moe_calibration = m == "routed" ? MoeCalibration::kRouted : MoeCalibration::kAllExperts;
      } else if (key == "overrides") {
        QAD_CHECK(v.IsSequence(), "quant.overrides: expected a list of {{pattern, quantize, quantize_inputs}}");
        for (const auto& o : v) {
          QAD_CHECK(o.IsMap() && o["pattern"], "quant.overrides: every entry needs a 'pattern'");
          ModuleOverride mo;
          for (const auto& okv : o) {
            const auto ok = okv.first.as<std::string>();
            if (ok == "pattern") {
              mo.pattern = okv.second.as<std::string>();
            } else if (ok == "quantize") {
              mo.quantize = okv.second.as<bool>();
            } else if (ok == "quantize_inputs") {
              mo.quantize_inputs = okv.second.as<bool>();
            } else {
              fail("quant.overrides: unknown key '{}' (pattern, quantize, quantize_inputs)", ok);
            }
          }
          c.overrides.push_back(std::move(mo));
        }
      } else {
        fail("quant: unknown key '{}' (include, exclude, ste, method, calib_samples, quantize_inputs, overrides, "
             "moe_calibration)", key);
      }
    }
  } catch (const YAML::Exception& e) {
    fail("quant: {}", e.what());
  }
  return c;
}

std::vector<std::string> apply_nvfp4(model::CausalLM& lm, const QuantConfig& cfg) {
  const auto linears = lm->linears();
  std::map<std::string, Decision> chosen;  // module -> decision, only the selected ones
  for (auto l : linears) {
    const auto& name = l->name();
    auto d = decide(cfg, name);
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
  return names;
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

}  // namespace qad::quant
