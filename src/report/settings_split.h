// Compacting settings for comparison tables: a setting that every row shares goes into one "common
// settings" line; only the settings that differ become table columns.
#pragma once
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace qad::report {

using Settings = std::vector<std::pair<std::string, std::string>>;  // name, value as written; in order

// One value held by every row that has the setting at all (rows: indices into the input, ascending).
struct SharedSetting {
  std::string name;
  std::string value;
  std::vector<size_t> rows;
};

struct SettingsSplit {
  std::vector<SharedSetting> shared;  // first-seen order
  std::vector<std::string> differing;  // names with two or more values among the rows, first-seen order
};

// A setting is shared when all rows that have it agree, differing otherwise. With one row everything is shared.
SettingsSplit split_settings(const std::vector<Settings>& rows);

// run.json "config" as settings: nested objects flattened with dots ("optim.lr"), strings unquoted, numbers,
// booleans and arrays as JSON writes them.
Settings flatten_config(const nlohmann::ordered_json& config);

// "Common settings: a = 1, b = x. Only in A and B: c = 2." — shared settings held by every row first, then
// those held by a subset, grouped by the rows holding them (named by row_names). Empty when none are shared.
std::string describe_shared(const std::vector<SharedSetting>& shared, const std::vector<std::string>& row_names);

}  // namespace qad::report
