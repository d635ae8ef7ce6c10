// Settings precedence and the method-label check (see config_sources.h).
#include "train/config_sources.h"

#include <fmt/format.h>

namespace qad::train {
namespace {

constexpr const char* kWeightKeys[] = {"kl", "ce", "cka"};

std::string weights_of(const LossConfig& l) { return fmt::format("kl={:g}, ce={:g}, cka={:g}", l.kl, l.ce, l.cka); }

}  // namespace

AssembledConfig assemble_config(const ConfigSources& s) {
  AssembledConfig out;
  nlohmann::json recipe = s.recipe.is_null() ? nlohmann::json::object() : s.recipe;
  const std::string recipe_method = recipe.contains("method") && recipe["method"].is_string()
                                        ? recipe["method"].get<std::string>()
                                        : std::string();
  std::string method = !s.method.empty() ? s.method : !recipe_method.empty() ? recipe_method : "qad";
  const Method m = parse_method(method);
  method = method_name(m);
  out.config = defaults_for(m);
  if (!recipe_method.empty() && parse_method(recipe_method) != m) {
    // The recipe's loss weights define its own method: --method's defaults replace them.
    std::vector<std::string> dropped;
    if (recipe.contains("loss") && recipe["loss"].is_object()) {
      for (const char* k : kWeightKeys) {
        if (recipe["loss"].contains(k)) {
          dropped.push_back(k);
          recipe["loss"].erase(k);
        }
      }
    }
    recipe["method"] = method;
    std::string by_flag;
    const auto& flag_loss = s.flags.contains("loss") ? s.flags["loss"] : nlohmann::json::object();
    for (const char* k : kWeightKeys) {
      if (flag_loss.contains(k)) by_flag += std::string(by_flag.empty() ? "" : ", ") + k;
    }
    out.warnings.push_back(fmt::format(
        "--method {} overrides the method of the recipe {} ({}); its loss weights are {}'s defaults ({}){}{}", method,
        s.recipe_path, recipe_method, method, weights_of(out.config.loss),
        by_flag.empty() ? "" : " except " + by_flag + " set by flags",
        dropped.empty() ? "" : "; the recipe's own weights were not used"));
  }
  if (!recipe.empty()) out.config.merge_json(recipe, s.recipe_path);
  nlohmann::json patch = s.flags;
  patch["method"] = method;
  out.config.merge_json(patch, "command line");
  if (out.config.method == Method::kPtq && out.config.run.steps != 0) {
    out.warnings.push_back(fmt::format("ptq is calibration only; --steps {} is ignored", out.config.run.steps));
    out.config.run.steps = 0;
  }
  for (auto& w : method_label_warnings(out.config)) out.warnings.push_back(std::move(w));
  return out;
}

std::vector<std::string> method_label_warnings(const TrainConfig& c) {
  std::vector<std::string> w;
  const auto& l = c.loss;
  const std::string label = method_name(c.method);
  switch (c.method) {
    case Method::kQad:
      if (l.cka > 0) {
        w.push_back(fmt::format("the run is labelled qad but has a CKA term (loss.cka={:g}): that is CKA-QAD; use "
                                "--method cka-qad, or --cka 0 for QAD", l.cka));
      }
      [[fallthrough]];
    case Method::kCkaQad:
      if (c.method == Method::kCkaQad && l.cka == 0) {
        w.push_back("the run is labelled cka-qad but loss.cka is 0: that is QAD; use --method qad, or --cka "
                    "LAMBDA (cka-qad's default is 0.1)");
      }
      if (l.kl == 0) {
        w.push_back(fmt::format("the run is labelled {} but loss.kl is 0: it does not distill the teacher's logits",
                                label));
      }
      break;
    case Method::kQat:
      if (l.kl > 0 || l.cka > 0) {
        w.push_back(fmt::format("the run is labelled qat but learns from the teacher (loss.kl={:g}, loss.cka={:g}): "
                                "that is distillation; use --method qad or cka-qad, or --kl 0 --cka 0 for QAT",
                                l.kl, l.cka));
      }
      break;
    case Method::kPtq:
    case Method::kPretrain:
      break;
  }
  return w;
}

}  // namespace qad::train
