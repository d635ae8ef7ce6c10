// What the user sees: RUN_DIR/metrics.jsonl (docs/report.md's format, one flushed line per record; NaN
// written as null) and the one-line-per-step progress text. Torch-free.
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace qad::train {

// A number for the JSONL: non-finite values become null (docs/report.md).
nlohmann::json finite_or_null(double v);
nlohmann::json layer_object(const std::vector<std::pair<std::string, double>>& per_layer);

class MetricsLog {
 public:
  // Appends to `path` (a resumed run appends; the report keeps the later line of a step logged twice).
  // An empty path writes nothing.
  explicit MetricsLog(const std::filesystem::path& path);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const nlohmann::json& record);  // one line, flushed

 private:
  std::FILE* f_ = nullptr;
};

// "step 12/100 | loss 0.1234 kl 0.1200 ce 2.310 cka 0.0034 | lr 9.50e-06 | gnorm 0.710 | 12.3k tok/s | ETA 1:23"
struct StepLine {
  int64_t step = 0, total = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, eta_s = -1;
  std::optional<double> kl, ce, cka_term;
  bool skipped = false;
};
std::string format_step_line(const StepLine& s);

}  // namespace qad::train
