// TaskValidation and BestCheckpoint (task_validation.h).
#include "train/task_validation.h"

#include <cmath>

#include "eval/task_eval.h"
#include "eval/task_file.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace qad::train {

struct TaskValidation::Impl {
  eval::TaskFile tasks;
  tokenizer::Tokenizer tok;
  eval::TaskEvalOptions options;
};

TaskValidation::TaskValidation(const std::string& tasks, const std::string& tokenizer_dir, int64_t items,
                               int64_t max_new_tokens)
    : impl_(new Impl{eval::read_task_file(tasks), tokenizer::Tokenizer::load(tokenizer_dir), {}}) {
  QAD_CHECK(items >= 1 && max_new_tokens >= 1, "run.valid_task_items and run.valid_task_max_new_tokens must be >= 1");
  if (static_cast<int64_t>(impl_->tasks.items.size()) > items) impl_->tasks.items.resize(static_cast<size_t>(items));
  impl_->options.max_new_tokens = max_new_tokens;
  impl_->options.progress = false;
}

TaskValidation::~TaskValidation() = default;

double TaskValidation::accuracy(model::CausalLM& lm) const {
  return eval::evaluate_tasks(lm, impl_->tok, impl_->tasks, impl_->options).all.accuracy();
}

BestCheckpoint::BestCheckpoint(std::string metric) : metric_(std::move(metric)) {
  if (metric_.empty() || metric_ == "task_accuracy" || metric_ == "agreement" || metric_ == "mean_cka") return;
  QAD_CHECK(metric_ == "ppl" || metric_ == "ce" || metric_ == "kl", "run.best_metric '{}': choose task_accuracy, "
            "agreement, mean_cka, ppl, ce or kl (or leave it empty)", metric_);
  higher_better_ = false;
}

bool BestCheckpoint::improves(int64_t step, const ValidResult& v) {
  std::optional<double> x;
  if (metric_ == "task_accuracy") x = v.task_accuracy;
  if (metric_ == "agreement") x = v.agreement;
  if (metric_ == "mean_cka") x = v.mean_cka;
  if (metric_ == "ppl") x = v.ppl;
  if (metric_ == "ce") x = v.ce;
  if (metric_ == "kl") x = v.kl;
  if (!x || !std::isfinite(*x)) return false;
  if (best_ && (higher_better_ ? *x <= *best_ : *x >= *best_)) return false;
  best_ = x;
  step_ = step;
  return true;
}

nlohmann::json BestCheckpoint::to_json(const std::string& dir) const {
  return {{"metric", metric_}, {"value", best_ ? nlohmann::json(*best_) : nlohmann::json(nullptr)}, {"step", step_},
          {"dir", best_ ? nlohmann::json(dir) : nlohmann::json(nullptr)}};
}

}  // namespace qad::train
