// Token budgets of the grid's cells (see token_budget.h).
#include "experiment/token_budget.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <map>

#include "util/error.h"

namespace qad::experiment {
namespace {

const std::vector<std::string> kBudgetKeys = {"run.steps", "data.batch_size", "data.seq_len", "optim.grad_accum"};

// A recipe's value of "section.key", or "" when the recipe does not set it.
std::string recipe_value(const std::string& recipe, const std::string& key) {
  if (recipe.empty()) return {};
  YAML::Node root;
  try {
    root = YAML::LoadFile(recipe);
  } catch (const YAML::Exception& e) {
    fail("recipe {}: cannot read it ({}); the path is relative to the working directory", recipe, e.what());
  }
  const auto dot = key.find('.');
  const YAML::Node section = root[key.substr(0, dot)];
  if (section && section.IsMap()) {
    const YAML::Node v = section[key.substr(dot + 1)];
    if (v && v.IsScalar()) return v.Scalar();
  }
  return {};
}

std::optional<double> number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  return end && *end == '\0' ? std::optional<double>(d) : std::nullopt;
}

}  // namespace

std::string TokenBudget::describe() const {
  std::string s = fmt::format("{} steps × {} × {} × {}", steps, batch_size, seq_len, grad_accum);
  if (tokens) s += fmt::format(" = {:.0f} tokens", *tokens);
  return s;
}

TokenBudget token_budget(const Grid& grid, size_t method, size_t variant) {
  const MethodEntry& m = grid.methods.at(method);
  const std::string& recipe = m.recipe.empty() ? grid.recipe : m.recipe;
  std::map<std::string, std::string> v;
  for (const auto& k : kBudgetKeys) v[k] = recipe_value(recipe, k);
  for (const auto* sets : {&grid.base, &m.sets, &grid.variants.at(variant).sets}) {
    for (const auto& s : *sets) {
      if (v.count(s.key)) v[s.key] = s.value;
    }
  }
  TokenBudget b;
  std::optional<double> product = 1.0;
  for (const auto& k : kBudgetKeys) {
    const auto n = number(v[k]);
    product = (product && n) ? std::optional<double>(*product * *n) : std::nullopt;
    if (v[k].empty()) v[k] = "default";
  }
  b.steps = v["run.steps"];
  b.batch_size = v["data.batch_size"];
  b.seq_len = v["data.seq_len"];
  b.grad_accum = v["optim.grad_accum"];
  b.tokens = product;
  return b;
}

std::vector<std::string> check_token_budgets(const Grid& grid) {
  const bool varies_budget = std::any_of(grid.varied_keys.begin(), grid.varied_keys.end(), [](const auto& k) {
    return std::find(kBudgetKeys.begin(), kBudgetKeys.end(), k) != kBudgetKeys.end();
  });
  // Scopes whose cells must agree: each variant alone when the variants change the budget, else all cells.
  std::vector<std::vector<size_t>> scopes;
  if (varies_budget) {
    for (size_t v = 0; v < grid.variants.size(); ++v) scopes.push_back({v});
  } else {
    scopes.emplace_back();
    for (size_t v = 0; v < grid.variants.size(); ++v) scopes.back().push_back(v);
  }
  std::vector<std::string> warnings;
  for (const auto& scope : scopes) {
    std::map<std::string, std::vector<std::string>> by_budget;  // described budget → groups with it
    for (size_t v : scope) {
      for (size_t m = 0; m < grid.methods.size(); ++m) {
        if (grid.methods[m].method == "ptq") continue;
        Cell probe;
        probe.method = m;
        probe.variant = v;
        by_budget[token_budget(grid, m, v).describe()].push_back(grid.group_of(probe));
      }
    }
    if (by_budget.size() <= 1) continue;
    std::string detail;
    for (const auto& [budget, groups] : by_budget) {
      std::string names;
      for (const auto& g : groups) names += (names.empty() ? "" : ", ") + g;
      detail += fmt::format("; {}: {}", names, budget);
    }
    warnings.push_back(fmt::format(
        "the cells do not all get the same token budget (steps × batch_size × seq_len × grad_accum){}. Set "
        "run.steps, data.batch_size, data.seq_len and optim.grad_accum in `base:` for all methods, or vary them "
        "explicitly under `vary:`",
        detail));
  }
  return warnings;
}

}  // namespace qad::experiment
