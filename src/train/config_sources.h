// Where a run's settings come from, in order of precedence (lowest first): the method's defaults
// (defaults_for), the recipe (--config), the flags, then --set. A flag always beats the recipe. A recipe
// written for another method than --method names keeps its other settings but not its loss weights: those
// come from --method's defaults unless a flag sets them, and a warning says so. A run whose loss weights
// contradict its method label (qad with a CKA term, cka-qad without one, qat with a KL term) gets a warning,
// because reports and tables group runs by that label.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/config.h"

namespace qad::train {

struct ConfigSources {
  std::string recipe_path;           // empty: no recipe
  nlohmann::json recipe = nullptr;   // load_recipe(recipe_path) (null: none)
  std::string method;                // --method ("" = the recipe's, else qad)
  nlohmann::json flags = nlohmann::json::object();  // flags and --set, as one JSON patch
};

struct AssembledConfig {
  TrainConfig config;
  std::vector<std::string> warnings;  // printed as "qad: warning: ..." by the caller
};

AssembledConfig assemble_config(const ConfigSources& sources);

// Warnings for loss weights that contradict the method label (empty when they agree).
std::vector<std::string> method_label_warnings(const TrainConfig& c);

}  // namespace qad::train
