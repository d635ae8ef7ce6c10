// What the user sees: RUN_DIR/metrics.jsonl (docs/report.md's format, one flushed line per record; NaN
// written as null), final_metrics.json, and the one-line-per-step and per-validation progress text. Every
// record the trainer writes is built here. Torch-free.
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

// One optimizer step as logged. The line: "step 12/100 | loss 0.1234 kl 0.1200 ce 2.310 1-cka 0.0034 |
// lr 9.50e-06 | gnorm 0.710 | 12.3k tok/s | ETA 1:23".
struct StepLine {
  int64_t step = 0, total = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, eta_s = -1;
  std::optional<double> kl, ce, cka_term;
  std::optional<double> router_balance;  // MoE load-balancing loss (the record)
  bool skipped = false;
  int64_t tokens = 0;       // loss tokens trained on so far (the record)
  double peak_mem_gb = 0;   // (the record)
  std::vector<std::pair<std::string, double>> cka;  // per layer (the record)
};
std::string format_step_line(const StepLine& s);
nlohmann::json step_record(const StepLine& s);  // {"type": "train", ...}

// One validation pass (train/validate.h computes it): the metrics of eval/lm_metrics.h on the held-out batches.
struct ValidResult {
  std::optional<double> kl;         // nats per loss token; unset without a teacher
  double ce = 0, ppl = 0;           // on the data's labels
  std::optional<double> agreement;  // fraction of loss tokens where both argmaxes agree
  std::optional<double> mean_cka;   // mean over layers
  std::optional<double> task_accuracy;  // run.valid_tasks (task_validation.h); set by the trainer
  std::vector<std::pair<std::string, double>> cka;
  // MoE with a teacher: per MoE layer, the mean over loss tokens of |student top-k ∩ teacher top-k| / k.
  std::optional<double> mean_router_agreement;
  std::vector<std::pair<std::string, double>> router_agreement;
  int64_t tokens = 0, batches = 0;
  int64_t seq_len = 0;  // tokens per row of the validation batches (perplexity depends on it)
};
nlohmann::json valid_record(int64_t step, const ValidResult& v);  // {"type": "valid", ...}
// "valid @ step 10 (seq 512, 65,536 tokens): ppl 12.3 | kl ..."
std::string valid_line(int64_t step, const ValidResult& v);

// final_metrics.json: steps, tokens, training time and the last validation's metrics.
nlohmann::json final_metrics(int64_t steps, int64_t tokens, double train_seconds, const std::optional<ValidResult>& v);

}  // namespace qad::train
