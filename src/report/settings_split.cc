// Settings compaction (see settings_split.h).
#include "report/settings_split.h"

#include <algorithm>
#include <map>

namespace qad::report {
namespace {

void flatten(const nlohmann::ordered_json& j, const std::string& prefix, Settings& out) {
  for (const auto& [key, value] : j.items()) {
    const std::string name = prefix.empty() ? key : prefix + "." + key;
    if (value.is_object() && !value.empty()) {
      flatten(value, name, out);
    } else {
      out.emplace_back(name, value.is_string() ? value.get<std::string>()
                                               : value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
    }
  }
}

std::string join_names(const std::vector<size_t>& rows, const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i > 0) s += i + 1 == rows.size() ? " and " : ", ";
    s += rows[i] < names.size() ? names[rows[i]] : "row " + std::to_string(rows[i] + 1);
  }
  return s;
}

}  // namespace

SettingsSplit split_settings(const std::vector<Settings>& rows) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::pair<size_t, std::string>>> seen;  // name -> (row, value)
  for (size_t r = 0; r < rows.size(); ++r) {
    for (const auto& [name, value] : rows[r]) {
      auto& v = seen[name];
      if (v.empty()) order.push_back(name);
      if (v.empty() || v.back().first != r) v.emplace_back(r, value);  // a repeated name keeps its first value
    }
  }
  SettingsSplit out;
  for (const auto& name : order) {
    const auto& held = seen[name];
    const bool same = std::all_of(held.begin(), held.end(), [&](const auto& p) { return p.second == held[0].second; });
    if (!same) {
      out.differing.push_back(name);
      continue;
    }
    SharedSetting s{name, held[0].second, {}};
    for (const auto& p : held) s.rows.push_back(p.first);
    out.shared.push_back(std::move(s));
  }
  return out;
}

Settings flatten_config(const nlohmann::ordered_json& config) {
  Settings out;
  if (config.is_object()) flatten(config, "", out);
  return out;
}

std::string describe_shared(const std::vector<SharedSetting>& shared, const std::vector<std::string>& row_names) {
  // Groups in first-seen order; the group held by every row comes first.
  std::vector<std::pair<std::vector<size_t>, std::string>> groups;
  auto group_of = [&](const std::vector<size_t>& rows) -> std::string& {
    for (auto& g : groups) {
      if (g.first == rows) return g.second;
    }
    groups.emplace_back(rows, "");
    return groups.back().second;
  };
  std::vector<size_t> all(row_names.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  group_of(all);
  for (const auto& s : shared) {
    std::string& text = group_of(s.rows);
    text += (text.empty() ? "" : ", ") + s.name + " = " + s.value;
  }
  std::string out;
  for (const auto& [rows, text] : groups) {
    if (text.empty()) continue;
    if (!out.empty()) out += ' ';
    out += rows != all ? "Only in " + join_names(rows, row_names) + ": " : all.size() > 1 ? "Common settings: " : "Settings: ";
    out += text + ".";
  }
  return out;
}

}  // namespace qad::report
