// exp.yaml → Grid (see grid.h). Every key is checked here, so that a typo is one error naming the file and
// the key before anything runs, not a failed cell an hour later.
#include "experiment/grid.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "experiment/token_budget.h"
#include "experiment/yaml_value.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::experiment {
namespace {

const std::vector<std::string> kTopLevelKeys = {"name", "teacher", "data", "valid_data", "tasks", "base",
                                                "methods", "vary", "seeds", "eval", "compare"};
const std::vector<std::string> kMethods = {"ptq", "qat", "qad", "cka-qad", "pretrain"};
const std::vector<std::string> kSections = {"loss", "optim", "data", "quant", "run"};

// Settings the grid itself owns: each cell's value comes from a top-level key or from the runner.
const std::map<std::string, std::string> kReservedSettings = {
    {"run.teacher", "`teacher:`"},   {"data.path", "`data:`"},          {"data.valid_path", "`valid_data:`"},
    {"run.out", "the runner (OUT/cells/NAME/run)"}, {"run.seed", "`seeds:`"}, {"data.seed", "`seeds:`"},
    {"run.name", "the cell's name"}, {"method", "`methods:`"},
};

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string key_of(const YAML::Node& k, const std::string& where) {
  QAD_CHECK(k.IsScalar(), "{}: keys must be plain names", where);
  return k.Scalar();
}

void check_setting_key(const std::string& key, const std::string& where) {
  const auto dot = key.find('.');
  QAD_CHECK(dot != std::string::npos && dot > 0 && dot + 1 < key.size(),
            "{}: '{}' is not a setting; write section.key (sections: {})", where, key, join(kSections, ", "));
  const std::string section = key.substr(0, dot);
  QAD_CHECK(contains(kSections, section), "{}: '{}' names no section of qad distill's configuration ({})", where,
            key, join(kSections, ", "));
  const auto reserved = kReservedSettings.find(key);
  QAD_CHECK(reserved == kReservedSettings.end(), "{}: '{}' is set by {} for every cell; remove it here", where, key,
            reserved == kReservedSettings.end() ? "" : reserved->second);
}

// A mapping of settings, flat ("run.steps: 40") or nested ("run: {steps: 40}"), appended in file order.
void read_settings(const YAML::Node& node, const std::string& prefix, const std::string& where,
                   std::vector<Setting>& out, const std::set<std::string>& skip = {}) {
  QAD_CHECK(node.IsMap(), "{}: expected a mapping of settings (section.key: value)", where);
  for (const auto& kv : node) {
    const std::string k = key_of(kv.first, where);
    if (prefix.empty() && skip.count(k)) continue;
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    if (kv.second.IsMap() && !contains(kSections, key) && key.find('.') == std::string::npos) {
      fail("{}: '{}' is not a setting; write section.key (sections: {})", where, key, join(kSections, ", "));
    }
    if (kv.second.IsMap()) {
      read_settings(kv.second, key, where, out);
      continue;
    }
    check_setting_key(key, where + ": " + key);
    out.push_back({key, setting_text(kv.second)});
  }
}

std::string scalar_of(const YAML::Node& n, const std::string& where) {
  QAD_CHECK(n.IsScalar(), "{}: expected a single value", where);
  return n.Scalar();
}

std::string canonical_method(const std::string& m, const std::string& where) {
  const std::string name = m == "cka_qad" ? "cka-qad" : m;
  QAD_CHECK(contains(kMethods, name), "{}: unknown method '{}'; use {}", where, m, join(kMethods, ", "));
  return name;
}

std::vector<MethodEntry> read_methods(const YAML::Node& node, const std::string& where) {
  QAD_CHECK(node.IsSequence() && node.size() > 0,
            "{}: expected a list of methods, e.g. [qad, cka-qad], or entries {{name, method, recipe, set}}", where);
  std::vector<MethodEntry> out;
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string at = fmt::format("{}[{}]", where, i);
    const YAML::Node& e = node[i];
    MethodEntry m;
    if (e.IsScalar()) {
      m.method = canonical_method(e.Scalar(), at);
      m.name = m.method;
    } else {
      QAD_CHECK(e.IsMap(), "{}: expected a method name or a mapping {{name, method, recipe, set}}", at);
      for (const auto& kv : e) {
        const std::string k = key_of(kv.first, at);
        if (k == "name") {
          m.name = scalar_of(kv.second, at + ".name");
        } else if (k == "method") {
          m.method = canonical_method(scalar_of(kv.second, at + ".method"), at + ".method");
        } else if (k == "recipe") {
          m.recipe = scalar_of(kv.second, at + ".recipe");
        } else if (k == "set") {
          read_settings(kv.second, "", at + ".set", m.sets);
        } else {
          fail("{}: unknown key '{}'; a method entry has name, method, recipe, set", at, k);
        }
      }
      if (m.method.empty() && contains(kMethods, m.name)) m.method = m.name;
      QAD_CHECK(!m.method.empty(), "{}: say which method this entry runs (method: qad | cka-qad | ...)", at);
      if (m.name.empty()) m.name = m.method;
    }
    QAD_CHECK(safe_name(m.name) == m.name && !m.name.empty(),
              "{}: the name '{}' must use only letters, digits and . _ = + , - (it names directories)", at, m.name);
    for (const auto& other : out) {
      QAD_CHECK(other.name != m.name, "{}: the method name '{}' appears twice; give the entries distinct names",
                at, m.name);
    }
    out.push_back(std::move(m));
  }
  return out;
}

// `vary:` as a mapping: every combination of the listed values (the last key changes fastest).
std::vector<Variant> read_crossed(const YAML::Node& node, const std::string& where) {
  std::vector<std::pair<std::string, std::vector<std::string>>> axes;
  std::function<void(const YAML::Node&, const std::string&)> collect = [&](const YAML::Node& n,
                                                                           const std::string& prefix) {
    for (const auto& kv : n) {
      const std::string k = key_of(kv.first, where);
      const std::string key = prefix.empty() ? k : prefix + "." + k;
      if (kv.second.IsMap()) {
        collect(kv.second, key);
        continue;
      }
      const std::string at = where + ": " + key;
      check_setting_key(key, at);
      QAD_CHECK(kv.second.IsSequence() && kv.second.size() > 0, "{}: expected a non-empty list of values", at);
      std::vector<std::string> values;
      for (const auto& v : kv.second) values.push_back(setting_text(v));
      axes.emplace_back(key, std::move(values));
    }
  };
  collect(node, "");
  std::vector<Variant> out{Variant{}};
  for (const auto& [key, values] : axes) {
    std::vector<Variant> next;
    for (const auto& v : out) {
      for (const auto& value : values) {
        Variant w = v;
        w.name += (w.name.empty() ? "" : "__") + key + "=" + value;
        w.sets.push_back({key, value});
        next.push_back(std::move(w));
      }
    }
    out = std::move(next);
  }
  return out;
}

// `vary:` as a list: named points, each its own settings.
std::vector<Variant> read_named_variants(const YAML::Node& node, const std::string& where) {
  std::vector<Variant> out;
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string at = fmt::format("{}[{}]", where, i);
    QAD_CHECK(node[i].IsMap(), "{}: expected a mapping {{name: ..., section.key: value, ...}}", at);
    Variant v;
    read_settings(node[i], "", at, v.sets, {"name"});
    if (node[i]["name"]) {
      v.name = scalar_of(node[i]["name"], at + ".name");
    } else {
      std::vector<std::string> parts;
      for (const auto& s : v.sets) parts.push_back(s.key + "=" + s.value);
      v.name = join(parts, "__");
    }
    QAD_CHECK(!v.name.empty(), "{}: an empty variant; give it a name or settings", at);
    out.push_back(std::move(v));
  }
  QAD_CHECK(!out.empty(), "{}: an empty list; leave `vary:` out to run each method once per seed", where);
  return out;
}

std::vector<uint64_t> read_seeds(const YAML::Node& node, const std::string& where) {
  std::vector<uint64_t> seeds;
  auto as_seed = [&](const YAML::Node& n, const std::string& at) -> uint64_t {
    const std::string s = scalar_of(n, at);
    QAD_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos,
              "{}: '{}' is not a seed (a non-negative integer)", at, s);
    return std::stoull(s);
  };
  if (node.IsScalar()) {
    const uint64_t n = as_seed(node, where);
    QAD_CHECK(n >= 1 && n <= 1000, "{}: {} seeds; give a count from 1 to 1000 or a list of seeds", where, n);
    for (uint64_t s = 1; s <= n; ++s) seeds.push_back(s);
    return seeds;
  }
  QAD_CHECK(node.IsSequence() && node.size() > 0, "{}: expected a count (3 = seeds 1, 2, 3) or a list of seeds",
            where);
  for (size_t i = 0; i < node.size(); ++i) {
    const uint64_t s = as_seed(node[i], fmt::format("{}[{}]", where, i));
    QAD_CHECK(std::find(seeds.begin(), seeds.end(), s) == seeds.end(), "{}: seed {} appears twice", where, s);
    seeds.push_back(s);
  }
  return seeds;
}

// `eval:` as a mapping of qad eval flags (flag: value, flag: true for a bare flag) or a list of arguments.
std::vector<std::string> read_eval(const YAML::Node& node, const std::string& where, const std::string& teacher) {
  std::vector<std::string> args;
  const std::set<std::string> reserved = {"model", "json", "tasks"};
  auto flag_name = [](std::string k) { return k.rfind("--", 0) == 0 ? k.substr(2) : k; };
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      const std::string a = scalar_of(node[i], fmt::format("{}[{}]", where, i));
      if (a.rfind("--", 0) == 0) {
        QAD_CHECK(!reserved.count(flag_name(a)), "{}: {} is set by the runner (or `tasks:`); remove it", where, a);
      }
      args.push_back(a);
    }
    return args;
  }
  QAD_CHECK(node.IsMap(), "{}: expected qad eval flags as a mapping (max-items: 100) or a list of arguments", where);
  for (const auto& kv : node) {
    const std::string flag = flag_name(key_of(kv.first, where));
    const std::string at = where + ": " + flag;
    QAD_CHECK(!reserved.count(flag), "{}: --{} is set by the runner (or `tasks:`); remove it", at, flag);
    const YAML::Node& v = kv.second;
    if (v.IsScalar() && (v.Scalar() == "true" || v.Scalar() == "false") && v.Tag() != "!") {
      if (v.Scalar() == "false") continue;
      args.push_back("--" + flag);
      if (flag == "teacher") args.push_back(teacher);  // `teacher: true`: the experiment's teacher
      continue;
    }
    args.push_back("--" + flag);
    if (v.IsSequence()) {
      for (size_t i = 0; i < v.size(); ++i) args.push_back(scalar_of(v[i], fmt::format("{}[{}]", at, i)));
    } else {
      args.push_back(scalar_of(v, at));
    }
  }
  return args;
}

std::vector<Comparison> read_compare(const YAML::Node& node, const std::string& where,
                                     const std::vector<MethodEntry>& methods) {
  auto known = [&](const std::string& n, const std::string& at) {
    bool found = false;
    std::vector<std::string> names;
    for (const auto& m : methods) found |= m.name == n, names.push_back(m.name);
    QAD_CHECK(found, "{}: '{}' is not one of the methods ({})", at, n, join(names, ", "));
  };
  std::vector<Comparison> out;
  QAD_CHECK(node.IsSequence(), "{}: expected a list of pairs [a, b] (the summary reports a - b per seed)", where);
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string at = fmt::format("{}[{}]", where, i);
    QAD_CHECK(node[i].IsSequence() && node[i].size() == 2, "{}: expected a pair [a, b] of method names", at);
    Comparison c{scalar_of(node[i][0], at), scalar_of(node[i][1], at)};
    known(c.a, at);
    known(c.b, at);
    QAD_CHECK(c.a != c.b, "{}: compares '{}' with itself", at, c.a);
    out.push_back(c);
  }
  return out;
}

// Without `compare:`: every method against `qad` when the grid has it (the paper's baseline), else against
// the first method listed.
std::vector<Comparison> default_comparisons(const std::vector<MethodEntry>& methods) {
  std::string baseline = methods.front().name;
  for (const auto& m : methods) {
    if (m.name == "qad") baseline = "qad";
  }
  std::vector<Comparison> out;
  for (const auto& m : methods) {
    if (m.name != baseline) out.push_back({m.name, baseline});
  }
  return out;
}

std::vector<std::string> distill_args(const Grid& g, const MethodEntry& m, const Variant& v, uint64_t seed,
                                      const std::string& cell_name) {
  std::vector<std::string> a = {"distill", "--method", m.method};
  const std::string& recipe = m.recipe.empty() ? g.recipe : m.recipe;
  if (!recipe.empty()) a.insert(a.end(), {"--config", recipe});
  a.insert(a.end(), {"--teacher", g.teacher, "--data", g.data});
  if (!g.valid_data.empty()) a.insert(a.end(), {"--valid-data", g.valid_data});
  a.insert(a.end(), {"--name", cell_name});
  // Later --set wins in qad distill: base < method < variant < seed.
  for (const auto* sets : {&g.base, &m.sets, &v.sets}) {
    for (const auto& s : *sets) a.insert(a.end(), {"--set", s.key + "=" + s.value});
  }
  a.insert(a.end(), {"--set", fmt::format("run.seed={}", seed), "--set", fmt::format("data.seed={}", seed)});
  return a;
}

}  // namespace

std::string safe_name(const std::string& s) {
  std::string out = s;
  for (char& c : out) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    std::string_view("._=+,-").find(c) != std::string_view::npos;
    if (!ok) c = '_';
  }
  return out;
}

std::string Grid::group_of(const Cell& c) const {
  const std::string& v = variants.at(c.variant).name;
  return methods.at(c.method).name + (v.empty() ? "" : "__" + safe_name(v));
}

Grid parse_grid(const std::string& yaml_text, const std::string& label) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    fail("{}: not valid YAML: {}", label, e.what());
  }
  QAD_CHECK(root.IsMap(), "{}: expected a mapping with teacher, data, methods, ... (docs/experiments.md)", label);
  for (const auto& kv : root) {
    const std::string k = key_of(kv.first, label);
    QAD_CHECK(contains(kTopLevelKeys, k), "{}: unknown key '{}'; the keys are {}", label, k,
              join(kTopLevelKeys, ", "));
  }
  Grid g;
  auto required = [&](const char* key) {
    QAD_CHECK(root[key], "{}: '{}' is missing", label, key);
    return scalar_of(root[key], label + ": " + key);
  };
  auto optional = [&](const char* key) {
    return root[key] ? scalar_of(root[key], label + ": " + key) : std::string();
  };
  g.name = optional("name");
  g.teacher = required("teacher");
  g.data = required("data");
  g.valid_data = optional("valid_data");
  g.tasks = optional("tasks");
  if (root["base"]) {
    const YAML::Node& base = root["base"];
    QAD_CHECK(base.IsMap(), "{}: base: expected a mapping of settings (section.key: value) and recipe", label);
    if (base["recipe"]) g.recipe = scalar_of(base["recipe"], label + ": base.recipe");
    read_settings(base, "", label + ": base", g.base, {"recipe"});
  }
  QAD_CHECK(root["methods"], "{}: 'methods' is missing (e.g. methods: [qad, cka-qad])", label);
  g.methods = read_methods(root["methods"], label + ": methods");
  if (root["vary"] && !root["vary"].IsNull()) {
    const YAML::Node& vary = root["vary"];
    QAD_CHECK(vary.IsMap() || vary.IsSequence(),
              "{}: vary: expected a mapping (setting: [values], crossed) or a list of named variants", label);
    g.variants = vary.IsMap() ? read_crossed(vary, label + ": vary") : read_named_variants(vary, label + ": vary");
  } else {
    g.variants = {Variant{}};
  }
  for (const auto& v : g.variants) {
    for (const auto& s : v.sets) {
      if (!contains(g.varied_keys, s.key)) g.varied_keys.push_back(s.key);
    }
  }
  g.seeds = root["seeds"] ? read_seeds(root["seeds"], label + ": seeds") : std::vector<uint64_t>{1};
  if (root["eval"] && !root["eval"].IsNull()) g.eval_args = read_eval(root["eval"], label + ": eval", g.teacher);
  g.comparisons = root["compare"] ? read_compare(root["compare"], label + ": compare", g.methods)
                                  : default_comparisons(g.methods);

  std::map<std::string, std::string> made_by;  // cell name → what produced it (for the collision message)
  for (uint64_t seed : g.seeds) {
    for (size_t vi = 0; vi < g.variants.size(); ++vi) {
      for (size_t mi = 0; mi < g.methods.size(); ++mi) {
        Cell c;
        c.method = mi;
        c.variant = vi;
        c.seed = seed;
        c.name = fmt::format("{}__seed{}", g.group_of(c), seed);
        const std::string what = fmt::format("method {}, variant '{}', seed {}", g.methods[mi].name,
                                             g.variants[vi].name, seed);
        const auto [it, fresh] = made_by.emplace(c.name, what);
        QAD_CHECK(fresh, "{}: two cells would share the directory name '{}' ({}; {}); give the variants distinct "
                  "names", label, c.name, it->second, what);
        c.distill_args = distill_args(g, g.methods[mi], g.variants[vi], seed, c.name);
        g.cells.push_back(std::move(c));
      }
    }
  }
  for (auto& w : check_token_budgets(g)) g.warnings.push_back(label + ": " + w);
  return g;
}

Grid load_grid(const std::filesystem::path& file) {
  std::error_code ec;
  QAD_CHECK(std::filesystem::is_regular_file(file, ec), "{}: no such file (the experiment's grid, exp.yaml)",
            file.string());
  Grid g = parse_grid(read_file(file), file.string());
  g.file = file;
  if (g.name.empty()) g.name = file.stem().string();
  return g;
}

}  // namespace qad::experiment
