// Reads an eval.json: the object `qad eval --json` prints and `qad eval --out FILE` writes (docs/eval.md).
// The report shows its figures only in the evaluation table, next to the settings that produced them,
// because they come from other data than the training validation split.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace qad::report {

// One setting that produced the figures ("seq len" = "512"). `defines_figures`: rows whose values differ
// are not comparable (data, windows, task file, sampling...); device and dtype only shift the last digits.
struct EvalSetting {
  std::string name;
  std::string value;
  bool defines_figures = true;
};

struct EvalResult {
  std::filesystem::path file;
  std::string model;      // "model": the label qad eval was given
  std::string model_dir;  // "model_dir"
  std::optional<double> perplexity;          // "perplexity" (packed stream or rolling, see the "ppl mode" setting)
  std::optional<double> kl;                  // "kl": KL(teacher || model), nats/token, with --teacher
  std::optional<double> agreement;           // "top1_agreement", with --teacher
  std::optional<double> teacher_perplexity;  // "teacher_perplexity", the --teacher on the same windows
  std::optional<double> task_accuracy;       // "tasks.accuracy": each item's first sample
  std::optional<int64_t> task_correct, task_items;
  std::optional<double> avg_at_k;            // "tasks.avg_at_k.value" when more than one sample per item
  std::vector<EvalSetting> settings;         // fixed order: what ran, on what data, with which task rules
};

// Throws qad::Error naming the file when it cannot be read, is not JSON, or is not a qad eval object (an
// object with "model"); a field of the wrong type is a warning "FILE: ..." and is left out.
EvalResult read_eval_json(const std::filesystem::path& file, std::vector<std::string>& warnings);

}  // namespace qad::report
