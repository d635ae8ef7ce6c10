// YAML values of exp.yaml as `qad distill --set` text: scalars as written, lists and mappings as JSON (which
// qad distill's --set parser reads back as lists and mappings).
#pragma once
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <string>

namespace qad::experiment {

// A scalar's text, or a list / mapping as compact JSON.
std::string setting_text(const YAML::Node& node);

// A YAML value as JSON: quoted scalars stay strings; unquoted ones become booleans, null, integers or numbers
// where they read as such.
nlohmann::json yaml_to_json(const YAML::Node& node);

}  // namespace qad::experiment
