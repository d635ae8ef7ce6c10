// Reads a training run directory (format in docs/report.md): metrics.jsonl (one JSON object per line,
// "train" and "valid" records), run.json (name, method, config) and an optional final_metrics.json.
// Damaged input never throws past what it must: bad lines become warnings naming file:line.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qad::report {

struct LayerValue {
  std::string layer;  // e.g. "layers.3"
  double value = 0;   // NaN when the file had NaN/null
};

struct MetricRecord {
  int64_t step = 0;
  std::map<std::string, double> values;  // every numeric top-level field: loss, kl, ce, tokens, lr, ...
  std::vector<LayerValue> cka;           // the "cka" object, layers in natural order (layers.2 < layers.10)
  size_t line = 0;                       // 1-based line in metrics.jsonl

  std::optional<double> get(std::string_view key) const;
};

struct FinalMetric {
  std::string key;                // nested objects are flattened with dots: "arith.accuracy"
  std::optional<double> number;   // set for numbers (and "NaN"/"Infinity" strings)
  std::string text;               // the value as written, for strings and booleans
};

struct RunData {
  std::filesystem::path dir;
  std::string name;    // run.json "name", else the directory name
  std::string method;  // run.json "method" (qad | cka-qad | qat | ptq), else "unknown"
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  std::vector<MetricRecord> train;  // ascending step; a step logged twice (resumed run) keeps the later line
  std::vector<MetricRecord> valid;
  std::vector<FinalMetric> final_metrics;  // file order
  std::vector<std::string> warnings;       // "DIR/metrics.jsonl:57: ..." and the like

  // Layer names seen in any record's "cka", in natural order.
  std::vector<std::string> layer_names() const;
  const FinalMetric* final_metric(std::string_view key) const;
};

// Throws qad::Error when `dir` is missing or has none of the three files; everything else is a warning.
RunData read_run(const std::filesystem::path& dir);

// "layers.2" < "layers.10": digit runs compare as numbers, the rest byte-wise.
bool natural_less(std::string_view a, std::string_view b);

}  // namespace qad::report
