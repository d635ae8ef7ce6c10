// Checkpoint selection during training: task accuracy as an optional validation metric (qad eval's
// generative protocol on the first N items of a task file: greedy, continuous batching, the after-think
// answer rule, exact match) and the rule that keeps the best checkpoint by a chosen validation metric in
// RUN_DIR/best (docs/train.md "Checkpoint selection").
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "model/causal_lm.h"
#include "train/validate.h"

namespace qad::train {

class TaskValidation {
 public:
  // tasks: a task .jsonl (docs/eval.md); tokenizer_dir: where tokenizer.json is (the teacher's directory).
  TaskValidation(const std::string& tasks, const std::string& tokenizer_dir, int64_t items, int64_t max_new_tokens);
  ~TaskValidation();
  double accuracy(model::CausalLM& lm) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "" (off), "task_accuracy", "agreement", "mean_cka" (higher is better), "ppl", "ce", "kl" (lower is better).
class BestCheckpoint {
 public:
  explicit BestCheckpoint(std::string metric);  // throws naming run.best_metric for an unknown name
  bool enabled() const { return !metric_.empty(); }
  // True (and remembered) when `v` has the metric and beats every earlier value; ties keep the earlier step.
  bool improves(int64_t step, const ValidResult& v);
  nlohmann::json to_json(const std::string& dir) const;  // {"metric", "value", "step", "dir"}

 private:
  std::string metric_;
  bool higher_better_ = true;
  std::optional<double> best_;
  int64_t step_ = -1;
};

}  // namespace qad::train
