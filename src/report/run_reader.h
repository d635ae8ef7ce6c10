// Reads what `qad report` compares (formats in docs/report.md): a training run directory (metrics.jsonl with
// "train" and "valid" records, run.json, final_metrics.json), or an NVFP4 export / model directory that only
// holds an eval.json; either may have an eval.json from `qad eval --out`. Damaged input never throws past what
// it must: bad lines become warnings naming file:line.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "report/eval_reader.h"

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

enum class EntryKind {
  kRun,     // a training run directory (qad distill --out)
  kExport,  // an NVFP4 export (hf_quant_config.json; qad quantize --out, or RUN_DIR/export/nvfp4)
  kModel,   // any other model directory that holds an eval.json
};

struct RunData {
  std::filesystem::path dir;
  EntryKind kind = EntryKind::kRun;
  std::string name;    // run.json "name", else the directory name
  std::string method;  // run.json "method" (qad | cka-qad | qat | ptq | pretrain), else "unknown"; an export:
                       // its run's method inside RUN_DIR/export/, else "ptq" for qad's own exports
  std::string device;  // where it trained: run.json config.run.device ("cpu", "cuda", "auto"...); "" = unknown
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  std::vector<MetricRecord> train;  // ascending step; a step logged twice (resumed run) keeps the later line
  std::vector<MetricRecord> valid;
  std::vector<FinalMetric> final_metrics;  // file order
  std::optional<EvalResult> eval;          // DIR/eval.json
  std::vector<std::string> warnings;       // "DIR/metrics.jsonl:57: ..." and the like

  // Layer names seen in any record's "cka", in natural order.
  std::vector<std::string> layer_names() const;
  const FinalMetric* final_metric(std::string_view key) const;
  // No training records but validation ones (a PTQ run): the report draws its validation values as
  // horizontal baselines instead of a lone point.
  bool is_baseline() const { return train.empty() && !valid.empty(); }
};

// Throws qad::Error when `dir` is missing, is an export without eval.json, or holds none of run.json,
// metrics.jsonl, final_metrics.json, eval.json; everything else is a warning.
RunData read_run(const std::filesystem::path& dir);

// "layers.2" < "layers.10": digit runs compare as numbers, the rest byte-wise.
bool natural_less(std::string_view a, std::string_view b);

}  // namespace qad::report
