// Reading a cell's metrics (see cell_metrics.h). Null values (qad distill writes null for a non-finite
// number) are left out, so a group's n for that metric counts only the real values.
#include "experiment/cell_metrics.h"

#include <algorithm>
#include <cctype>

#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::experiment {
namespace fs = std::filesystem;
namespace {

void put(MetricValues& out, const std::string& name, const nlohmann::json& v) {
  if (v.is_number()) out[name] = v.get<double>();
}

nlohmann::json read_json(const fs::path& file) {
  auto j = nlohmann::json::parse(read_file(file), nullptr, false);
  QAD_CHECK(!j.is_discarded() && j.is_object(), "{}: not a JSON object; delete it to run the cell's step again",
            file.string());
  return j;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "layers.10" after "layers.2": digit runs compare as numbers.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t ie = i, je = j;
      while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
      const std::string na = a.substr(i, ie - i), nb = b.substr(j, je - j);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = ie, j = je;
      continue;
    }
    if (a[i] != b[j]) return a[i] < b[j];
    ++i, ++j;
  }
  return a.size() - i < b.size() - j;
}

}  // namespace

const std::vector<std::string>& headline_metrics() {
  static const std::vector<std::string> kHeadline = {
      "kl", "ppl", "agreement", "mean_cka", "task_accuracy", "eval.accuracy", "eval.kl", "eval.perplexity",
      "eval.top1_agreement"};
  return kHeadline;
}

MetricValues metrics_from_final(const nlohmann::json& f) {
  MetricValues out;
  for (const char* k : {"kl", "ppl", "ce", "agreement", "mean_cka", "task_accuracy", "steps", "tokens",
                        "train_seconds"}) {
    if (f.contains(k)) put(out, k, f[k]);
  }
  if (f.contains("cka") && f["cka"].is_object()) {
    for (const auto& [layer, v] : f["cka"].items()) put(out, "cka." + layer, v);
  }
  return out;
}

MetricValues metrics_from_eval(const nlohmann::json& e) {
  MetricValues out;
  for (const char* k : {"nll", "perplexity", "kl", "top1_agreement"}) {
    if (e.contains(k)) put(out, std::string("eval.") + k, e[k]);
  }
  if (e.contains("tasks") && e["tasks"].is_object()) {
    const auto& t = e["tasks"];
    if (t.contains("accuracy")) put(out, "eval.accuracy", t["accuracy"]);
    if (t.contains("by_group") && t["by_group"].is_object()) {
      for (const auto& [group, g] : t["by_group"].items()) {
        if (g.is_object() && g.contains("accuracy")) put(out, "eval.accuracy." + group, g["accuracy"]);
      }
    }
  }
  return out;
}

MetricValues read_cell_metrics(const CellPaths& paths) {
  MetricValues out;
  std::error_code ec;
  const fs::path final_metrics = paths.run_dir / "final_metrics.json";
  if (fs::is_regular_file(final_metrics, ec)) out = metrics_from_final(read_json(final_metrics));
  if (fs::is_regular_file(paths.eval_json, ec)) {
    for (const auto& [k, v] : metrics_from_eval(read_json(paths.eval_json))) out[k] = v;
  }
  return out;
}

int metric_direction(const std::string& m) {
  const std::string base = m.rfind("eval.", 0) == 0 ? m.substr(5) : m;
  for (const char* lower : {"kl", "ppl", "ce", "nll", "perplexity"}) {
    if (base == lower) return -1;
  }
  if (base == "agreement" || base == "top1_agreement" || base == "mean_cka" || base.rfind("cka.", 0) == 0 ||
      base == "task_accuracy" || base.rfind("accuracy", 0) == 0) {
    return +1;
  }
  return 0;
}

std::vector<std::string> order_metrics(std::vector<std::string> names) {
  const auto& head = headline_metrics();
  auto rank = [&](const std::string& m) -> int {
    const auto it = std::find(head.begin(), head.end(), m);
    if (it != head.end()) return static_cast<int>(it - head.begin());
    if (m == "ce" || m == "eval.nll") return 100;
    if (m.rfind("eval.accuracy.", 0) == 0) return 200;
    if (m.rfind("cka.", 0) == 0) return 300;
    if (m == "train_seconds" || m == "steps" || m == "tokens" || ends_with(m, "seconds")) return 500;
    return 400;
  };
  std::sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    const int ra = rank(a), rb = rank(b);
    if (ra != rb) return ra < rb;
    return natural_less(a, b);
  });
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

}  // namespace qad::experiment
