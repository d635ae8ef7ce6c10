// Run-directory reader (see run_reader.h and docs/report.md).
#include "report/run_reader.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <set>

#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::report {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// JSON has no NaN/Infinity, but Python's json module writes them bare. Turn bare NaN, Infinity and
// -Infinity outside strings into the strings "NaN", "Infinity", "-Infinity", which number_of() accepts.
std::string quote_nonfinite_literals(std::string_view line) {
  std::string out;
  bool in_string = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < line.size()) out += line[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (std::string_view lit : {"-Infinity", "Infinity", "NaN"}) {
      if (line.substr(i, lit.size()) == lit) {
        out += '"';
        out += lit;
        out += '"';
        i += lit.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

std::optional<double> number_of(const ojson& v) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    if (s == "NaN" || s == "nan") return kNaN;
    if (s == "Infinity" || s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
  }
  return std::nullopt;
}

std::optional<ojson> parse_json(std::string_view text) {
  ojson j = ojson::parse(text.begin(), text.end(), nullptr, false);
  if (!j.is_discarded()) return j;
  const std::string fixed = quote_nonfinite_literals(text);
  j = ojson::parse(fixed, nullptr, false);
  if (!j.is_discarded()) return j;
  return std::nullopt;
}

std::string describe_parse_error(std::string_view text) {
  try {
    const ojson ignored = ojson::parse(quote_nonfinite_literals(text));
    (void)ignored;
  } catch (const ojson::parse_error& e) {
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 5: ..." -> keep from "column".
    if (auto p = what.find("column"); p != std::string::npos) return what.substr(p);
    return what;
  }
  return "invalid JSON";
}

void read_metrics(const fs::path& file, RunData& run) {
  const std::string text = read_file(file);
  const std::string where = file.string();
  std::map<int64_t, MetricRecord> by_step[2];  // 0 = train, 1 = valid
  size_t relogged = 0;
  std::set<std::string> unknown_types;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    const bool last_unterminated = end == std::string::npos;
    if (last_unterminated) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;

    auto warn = [&](const std::string& msg) { run.warnings.push_back(fmt::format("{}:{}: {}", where, line_no, msg)); };
    const auto parsed = parse_json(line);
    if (!parsed) {
      if (last_unterminated) {
        warn("truncated last line (the run was probably stopped while writing it); ignored");
      } else {
        warn(fmt::format("not valid JSON ({}); line skipped", describe_parse_error(line)));
      }
      continue;
    }
    const ojson& j = *parsed;
    if (!j.is_object()) {
      warn("not a JSON object; line skipped");
      continue;
    }
    const auto type_it = j.find("type");
    if (type_it == j.end() || !type_it->is_string()) {
      warn(R"(no "type" field ("train" or "valid"); line skipped)");
      continue;
    }
    const std::string type = type_it->get<std::string>();
    if (type != "train" && type != "valid") {
      if (unknown_types.insert(type).second) {
        warn(fmt::format(R"(unknown record type "{}"; lines of this type are ignored)", type));
      }
      continue;
    }
    const auto step_it = j.find("step");
    const auto step = step_it == j.end() ? std::nullopt : number_of(*step_it);
    if (!step || !std::isfinite(*step) || *step < 0 || *step != std::floor(*step) || *step > 9e15) {
      warn(R"("step" is missing or not a non-negative integer; line skipped)");
      continue;
    }
    MetricRecord rec;
    rec.step = static_cast<int64_t>(*step);
    rec.line = line_no;
    for (const auto& [key, value] : j.items()) {
      if (key == "type" || key == "step") continue;
      if (key == "cka") {
        if (!value.is_object()) {
          warn(R"("cka" is not an object of layer name -> value; field ignored)");
          continue;
        }
        for (const auto& [layer, v] : value.items()) rec.cka.push_back({layer, number_of(v).value_or(kNaN)});
        continue;
      }
      if (auto v = number_of(value)) rec.values[key] = *v;
    }
    std::stable_sort(rec.cka.begin(), rec.cka.end(),
                     [](const LayerValue& a, const LayerValue& b) { return natural_less(a.layer, b.layer); });
    auto& slot = by_step[type == "valid" ? 1 : 0];
    relogged += slot.count(rec.step);
    slot[rec.step] = std::move(rec);
  }
  if (relogged > 0) {
    run.warnings.push_back(fmt::format("{}: {} step(s) were logged more than once (a resumed run?); the later "
                                       "line of each is used",
                                       where, relogged));
  }
  for (auto& [step, rec] : by_step[0]) run.train.push_back(std::move(rec));
  for (auto& [step, rec] : by_step[1]) run.valid.push_back(std::move(rec));
}

void flatten_final(const ojson& j, const std::string& prefix, RunData& run, const std::string& where) {
  for (const auto& [key, value] : j.items()) {
    const std::string name = prefix.empty() ? key : prefix + "." + key;
    if (value.is_object()) {
      flatten_final(value, name, run, where);
    } else if (value.is_array()) {
      run.warnings.push_back(fmt::format("{}: \"{}\" is an array; final metrics are scalars, so it is ignored",
                                         where, name));
    } else if (value.is_null()) {
      run.final_metrics.push_back({name, kNaN, "null"});
    } else {
      FinalMetric m{name, number_of(value), value.is_string() ? value.get<std::string>() : value.dump()};
      run.final_metrics.push_back(std::move(m));
    }
  }
}

}  // namespace

std::optional<double> MetricRecord::get(std::string_view key) const {
  auto it = values.find(std::string(key));
  if (it == values.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> RunData::layer_names() const {
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (const auto* records : {&train, &valid}) {
    for (const auto& r : *records) {
      for (const auto& lv : r.cka) {
        if (seen.insert(lv.layer).second) names.push_back(lv.layer);
      }
    }
  }
  std::stable_sort(names.begin(), names.end(), [](const auto& a, const auto& b) { return natural_less(a, b); });
  return names;
}

const FinalMetric* RunData::final_metric(std::string_view key) const {
  for (const auto& m : final_metrics) {
    if (m.key == key) return &m;
  }
  return nullptr;
}

bool natural_less(std::string_view a, std::string_view b) {
  size_t i = 0, j = 0;
  auto digit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; };
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && digit(a[i2])) ++i2;
      while (j2 < b.size() && digit(b[j2])) ++j2;
      // Compare digit runs by value: strip leading zeros, then by length, then lexically.
      std::string_view x = a.substr(i, i2 - i), y = b.substr(j, j2 - j);
      while (x.size() > 1 && x.front() == '0') x.remove_prefix(1);
      while (y.size() > 1 && y.front() == '0') y.remove_prefix(1);
      if (x.size() != y.size()) return x.size() < y.size();
      if (x != y) return x < y;
      i = i2, j = j2;
      continue;
    }
    if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]);
    ++i, ++j;
  }
  return a.size() - i < b.size() - j;
}

namespace {

std::string dir_name(const fs::path& dir) {
  const fs::path abs = fs::absolute(dir).lexically_normal();
  return abs.filename().empty() ? abs.parent_path().filename().string() : abs.filename().string();
}

// run.json's name and method (a warning, not an error, when it is damaged).
void read_run_json(const fs::path& meta, RunData& run) {
  const auto j = parse_json(read_file(meta));
  if (!j || !j->is_object()) {
    run.warnings.push_back(fmt::format("{}: not a JSON object; using the directory name and method \"unknown\"",
                                       meta.string()));
    return;
  }
  if (auto it = j->find("name"); it != j->end() && it->is_string() && !it->get<std::string>().empty()) {
    run.name = it->get<std::string>();
  }
  if (auto it = j->find("method"); it != j->end() && it->is_string()) run.method = it->get<std::string>();
  if (auto it = j->find("config"); it != j->end() && it->is_object()) run.config = *it;
  static const std::set<std::string> kMethods = {"qad", "cka-qad", "qat", "ptq", "pretrain"};
  if (!kMethods.count(run.method)) {
    run.warnings.push_back(fmt::format(R"({}: method "{}" is not one of qad, cka-qad, qat, ptq, pretrain)",
                                       meta.string(), run.method));
  }
  // The device the run computed on: run.json's top-level "device" (what --device auto resolved to, written by
  // the trainer since this field exists), else the configured one under "run" or at the config's top.
  const auto& c = run.config;
  if (auto d = j->find("device"); d != j->end() && d->is_string()) {
    run.device = d->get<std::string>();
  } else if (auto r = c.find("run"); r != c.end() && r->is_object() && r->contains("device") &&
             (*r)["device"].is_string()) {
    run.device = (*r)["device"].get<std::string>();
  } else if (auto d2 = c.find("device"); d2 != c.end() && d2->is_string()) {
    run.device = d2->get<std::string>();
  }
}

// An export's identity: inside RUN_DIR/export/ it is that run's model; otherwise one of qad's own exports is
// a `qad quantize` PTQ (qad writes no other exports outside a run directory).
void identify_export(const fs::path& dir, RunData& run) {
  const fs::path abs = fs::absolute(dir).lexically_normal();
  const fs::path parent = abs.filename().empty() ? abs.parent_path().parent_path() : abs.parent_path();
  if (parent.filename() == "export" && fs::exists(parent.parent_path() / "run.json")) {
    RunData owner;
    owner.name = dir_name(parent.parent_path());
    owner.method = "unknown";
    read_run_json(parent.parent_path() / "run.json", owner);
    run.name = fmt::format("{} (export/{})", owner.name, dir_name(dir));
    run.method = owner.method;
    return;
  }
  run.method = "nvfp4 export";
  const auto j = parse_json(read_file(dir / "hf_quant_config.json"));
  if (j && j->is_object()) {
    const auto p = j->find("producer");
    if (p != j->end() && p->is_object() && p->value("name", std::string()) == "qad") run.method = "ptq";
  }
}

// The eval.json beside the run or inside the export; a result for another directory is named, not hidden.
void read_eval(const fs::path& dir, RunData& run, bool required) {
  const fs::path file = dir / "eval.json";
  if (!fs::exists(file)) return;
  try {
    run.eval = read_eval_json(file, run.warnings);
  } catch (const Error& e) {
    if (required) throw;
    run.warnings.push_back(fmt::format("{}; its evaluation is left out", e.what()));
    return;
  }
  std::error_code ec;
  const fs::path evaluated(run.eval->model_dir);
  if (run.eval->model_dir.empty() || !fs::exists(evaluated, ec)) return;  // written on another machine: trust it
  const fs::path a = fs::weakly_canonical(dir, ec), b = fs::weakly_canonical(evaluated, ec);
  const fs::path rel = b.lexically_relative(a);
  if (rel.empty() || *rel.begin() == "..") {
    run.warnings.push_back(fmt::format("{}: it evaluates {}, not {}; run qad eval --model {} ... --out {}",
                                       file.string(), run.eval->model_dir, dir.string(), dir.string(), file.string()));
  } else if (rel != ".") {
    run.eval->settings.insert(run.eval->settings.begin(), {"evaluated", rel.string(), false});
  }
}

}  // namespace

RunData read_run(const fs::path& dir) {
  std::error_code ec;
  QAD_CHECK(fs::is_directory(dir, ec), "run directory {} does not exist or is not a directory", dir.string());
  const fs::path metrics = dir / "metrics.jsonl", meta = dir / "run.json", final_file = dir / "final_metrics.json";
  const bool is_run = fs::exists(metrics) || fs::exists(meta) || fs::exists(final_file);
  const bool is_export = fs::exists(dir / "hf_quant_config.json");
  const bool has_eval = fs::exists(dir / "eval.json");
  QAD_CHECK(is_run || has_eval || !is_export,
            "{} is an NVFP4 export without eval.json, so there is nothing to report; evaluate it first: qad eval "
            "--model {} --data ... --tasks ... --out {}",
            dir.string(), dir.string(), (dir / "eval.json").string());
  QAD_CHECK(is_run || has_eval,
            "{} is not a run directory: it has none of metrics.jsonl, run.json, final_metrics.json, eval.json "
            "(see docs/report.md)",
            dir.string());
  RunData run;
  run.dir = dir;
  run.name = dir_name(dir);
  run.method = "unknown";
  if (!is_run) {
    run.kind = is_export ? EntryKind::kExport : EntryKind::kModel;
    if (is_export) {
      identify_export(dir, run);
    } else {
      run.method = "model";
    }
    read_eval(dir, run, /*required=*/true);
    return run;
  }
  if (fs::exists(meta)) {
    read_run_json(meta, run);
  } else {
    run.warnings.push_back(fmt::format("{}: missing; using the directory name as the run name", meta.string()));
  }
  if (fs::exists(metrics)) read_metrics(metrics, run);
  if (fs::exists(final_file)) {
    const auto j = parse_json(read_file(final_file));
    if (!j || !j->is_object()) {
      run.warnings.push_back(fmt::format("{}: not a JSON object; final metrics ignored", final_file.string()));
    } else {
      if (j->contains("model_dir") || j->contains("tasks")) {
        run.warnings.push_back(fmt::format("{}: this looks like qad eval output; its figures come from other data than "
                                           "the validation split: move it to {} so that the report shows it as an "
                                           "evaluation",
                                           final_file.string(), (dir / "eval.json").string()));
      }
      flatten_final(*j, "", run, final_file.string());
    }
  }
  read_eval(dir, run, /*required=*/false);
  return run;
}

}  // namespace qad::report
