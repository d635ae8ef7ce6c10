// heldout_nll: summed next-token negative log-likelihood over documents, in FP64 (loss/token_metrics.h's nll_sum,
// the one `qad eval` and the trainer's validation use).
#include "quant/perplexity.h"

#include <cmath>

#include "loss/token_metrics.h"
#include "util/error.h"

namespace qad::quant {

double NllResult::perplexity() const { return std::exp(mean()); }

NllResult heldout_nll(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& documents, int64_t max_len) {
  QAD_CHECK(max_len >= 2, "heldout_nll: max_len must be at least 2, got {}", max_len);
  torch::NoGradGuard no_grad;
  const auto device = lm->model->embed_tokens->weight.device();
  NllResult r;
  for (const auto& doc : documents) {
    for (size_t start = 0; start + 1 < doc.size(); start += static_cast<size_t>(max_len - 1)) {
      const auto n = static_cast<int64_t>(std::min<size_t>(doc.size() - start, static_cast<size_t>(max_len)));
      if (n < 2) break;
      auto ids = torch::tensor(std::vector<int64_t>(doc.begin() + start, doc.begin() + start + n), torch::kLong)
                     .to(device)
                     .unsqueeze(0);
      auto logits = lm->forward(ids).logits.to(torch::kFloat64)[0];  // [n, V]; FP64 log-softmax
      r.nll_sum += loss::nll_sum(logits.narrow(0, 0, n - 1), ids[0].narrow(0, 1, n - 1), n);
      r.tokens += n - 1;
    }
  }
  return r;
}

}  // namespace qad::quant
