// The sums that perplexity, KL(teacher || model) and top-1 agreement are means of, over scored target
// tokens (docs/eval.md "Perplexity, KL and agreement"). `qad eval` (eval/lm_metrics.cc), the trainer's
// validation (train/validate.cc, metrics.jsonl and final_metrics.json) and the PTQ perplexity yardstick
// (quant/perplexity.cc) all add their tokens here, so their figures are the same quantities computed the
// same way.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace qad::loss {

// Sum over rows of logits [n, V] of -log softmax(logits)[target] (targets [n] int64), in FP64 from
// chunk_rows rows of FP32 log-softmax at a time (FP64 throughout for FP64 logits).
double nll_sum(const torch::Tensor& logits, const torch::Tensor& targets, int64_t chunk_rows = 2048);

struct TokenMetricSums {
  int64_t tokens = 0;      // scored targets: the denominator of every mean
  double nll = 0;          // sum of -log p_model(target)
  double teacher_nll = 0;  // sum of -log p_teacher(target) (when asked for)
  double kl = 0;           // sum of per-token KL(teacher || model)
  int64_t agree = 0;       // tokens where both argmaxes agree (first index on ties)

  // Adds n scored rows: logits [n, V] (the scored positions only), targets [n], teacher_logits [n, V] on the
  // same device or undefined (no teacher). score_teacher: also sum the teacher's own NLL.
  void add(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& teacher_logits,
           int64_t chunk_rows, bool score_teacher = false);
};

// The rows of logits [..., V] where mask [...] is non-zero, as [n, V], and the matching targets [n].
struct ScoredRows {
  torch::Tensor logits, targets, rows;  // rows: the flat indexes, to select a teacher's logits the same way
};
ScoredRows scored_rows(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& mask);

}  // namespace qad::loss
