// Metrics over k samples per item (docs/eval.md "Sampling metrics"): avg@k (mean per-sample accuracy),
// pass@k (the unbiased estimator of Chen et al. 2021, 1 - C(n-c, k) / C(n, k)) and maj@k (majority vote of
// the first k samples' answers), each a mean over items with its standard error. Torch-free.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qad::eval {

struct Estimate {
  double value = 0;
  double standard_error = 0;  // sample standard deviation over items / sqrt(items); 0 for one item
  int64_t items = 0;
};

// Mean of per-item values and its standard error.
Estimate mean_estimate(const std::vector<double>& per_item);

// P(at least one of k samples drawn without replacement from n, c of them correct, is correct).
double pass_at_k(int64_t n, int64_t c, int64_t k);

struct SampleOutcome {
  std::string vote;  // the answer's vote key ("" = no answer: does not vote)
  bool correct = false;
};

// Majority answer of the first k samples: most votes, ties to the answer seen first; false with no votes.
bool majority_correct(const std::vector<SampleOutcome>& samples, int64_t k);

// Over items (each with the same number n >= k of samples):
Estimate avg_at_k(const std::vector<std::vector<SampleOutcome>>& items);  // mean over all n samples
Estimate pass_at(const std::vector<std::vector<SampleOutcome>>& items, int64_t k);
Estimate maj_at(const std::vector<std::vector<SampleOutcome>>& items, int64_t k);

}  // namespace qad::eval
