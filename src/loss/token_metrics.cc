// Metric sums over scored tokens (see token_metrics.h).
#include "loss/token_metrics.h"

#include <algorithm>

#include "loss/logit_losses.h"

namespace qad::loss {

double nll_sum(const torch::Tensor& logits, const torch::Tensor& targets, int64_t chunk_rows) {
  const auto compute = logits.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  double sum = 0;
  for (int64_t b = 0; b < logits.size(0); b += chunk_rows) {
    const int64_t n = std::min(chunk_rows, logits.size(0) - b);
    auto lp = torch::log_softmax(logits.narrow(0, b, n).to(compute), -1);
    sum -= lp.gather(1, targets.narrow(0, b, n).unsqueeze(1)).to(torch::kFloat64).sum().item<double>();
  }
  return sum;
}

void TokenMetricSums::add(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& teacher_logits,
                          int64_t chunk_rows, bool score_teacher) {
  const int64_t n = targets.size(0);
  if (n == 0) return;
  tokens += n;
  nll += nll_sum(logits, targets, chunk_rows);
  if (!teacher_logits.defined()) return;
  if (score_teacher) teacher_nll += nll_sum(teacher_logits, targets, chunk_rows);
  KLOptions ko;
  ko.chunk_tokens = chunk_rows;
  kl += kl_divergence(logits, teacher_logits, torch::Tensor(), ko).to(torch::kFloat64).item<double>() *
        static_cast<double>(n);
  agree += logits.argmax(-1).eq(teacher_logits.argmax(-1)).sum().item<int64_t>();
}

ScoredRows scored_rows(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& mask) {
  ScoredRows r;
  r.rows = mask.reshape({-1}).nonzero().reshape({-1});
  r.logits = logits.reshape({-1, logits.size(-1)}).index_select(0, r.rows);
  r.targets = targets.reshape({-1}).index_select(0, r.rows);
  return r;
}

}  // namespace qad::loss
