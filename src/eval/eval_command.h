// `qad eval` and `qad cka` as library functions (the CLI files only parse arguments), so that tests run
// exactly what the commands run. Output formats: docs/eval.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "eval/layer_cka.h"

namespace qad::eval {

struct EvalCommandOptions {
  std::string model;  // [LABEL=][fq:]DIR
  std::string teacher;  // optional
  std::vector<std::filesystem::path> data;
  std::filesystem::path tasks;  // optional
  std::string tokenizer;        // optional: tokenizer dir (default: the model's directory)
  int64_t max_tokens = 0;       // perplexity data: 0 = all
  int64_t seq_len = 512;
  int64_t batch_size = 8;        // windows per forward (perplexity)
  int64_t task_batch_size = 0;   // generation slots (0 = planned from free memory) / MC sequences per forward (0 = 32)
  int64_t max_new_tokens = 200;
  int64_t max_items = 0;         // tasks: 0 = all; else the first N items
  std::string bos = "auto";      // auto | never
  std::string doc_end = "eos";   // eos | none | token | id
  std::string ppl_mode = "packed";  // packed (one stream, windows across documents) | rolling (lm-eval style)
  std::string answer_rule = "after-think";
  std::string answer_check = "exact";  // exact | numeric | math | choice
  double abs_tol = 1e-6, rel_tol = 1e-6;  // numeric / math checks
  int64_t samples = 1;           // generations per item
  std::string pass_k;            // "1,4,8"; empty: 1 and samples
  double temperature = 0;        // 0 = greedy; > 0 samples
  double top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  std::string mc_norm = "sum";
  std::string stop_ids;          // empty: automatic; else "8191,8189"
  std::string group_field = "op";
  bool skip_bad_lines = false;
  std::string device = "auto", dtype = "auto";
  std::filesystem::path predictions;  // optional: per-item jsonl
  bool progress = true;
};

// Runs everything asked for and returns the metrics object that `--json` prints (schema: docs/eval.md).
nlohmann::json run_eval(const EvalCommandOptions& options);

// The human-readable summary of run_eval's object.
std::string format_eval_text(const nlohmann::json& metrics);

struct CkaCommandOptions {
  std::string teacher;
  std::vector<std::string> models;  // [LABEL=][fq:]DIR
  std::vector<std::filesystem::path> data;
  std::string tokenizer;
  int64_t tokens = 16384;  // data tokens to use (0 = all)
  int64_t seq_len = 256;
  int64_t batch_size = 8;
  bool include_norm = false;
  std::string format = "table";  // table | csv | json
  std::optional<std::filesystem::path> plot;
  std::string plot_variant = "biased";  // biased | debiased | minibatch-biased | minibatch-debiased
  std::string bos = "auto", doc_end = "eos";
  std::string device = "auto", dtype = "auto";
  bool progress = true;
};

// Computes per-layer CKA, writes the table/CSV/JSON to `out` and the plot when asked; returns the numbers.
CkaEvalResult run_cka(const CkaCommandOptions& options, std::ostream& out);

}  // namespace qad::eval
