// avg@k, pass@k, maj@k (sample_metrics.h).
#include "eval/sample_metrics.h"

#include <cmath>
#include <map>

#include "util/error.h"

namespace qad::eval {

Estimate mean_estimate(const std::vector<double>& v) {
  Estimate e;
  e.items = static_cast<int64_t>(v.size());
  if (v.empty()) return e;
  double sum = 0;
  for (double x : v) sum += x;
  e.value = sum / static_cast<double>(v.size());
  if (v.size() < 2) return e;
  double ss = 0;
  for (double x : v) ss += (x - e.value) * (x - e.value);
  e.standard_error = std::sqrt(ss / static_cast<double>(v.size() - 1) / static_cast<double>(v.size()));
  return e;
}

double pass_at_k(int64_t n, int64_t c, int64_t k) {
  QAD_CHECK(n >= 1 && c >= 0 && c <= n && k >= 1 && k <= n, "pass@k needs 1 <= k <= n and 0 <= c <= n, got n={} c={} k={}",
            n, c, k);
  if (n - c < k) return 1.0;
  // C(n-c, k) / C(n, k) = prod_{j = n-c+1}^{n} (1 - k / j): no large binomials.
  double fail = 1.0;
  for (int64_t j = n - c + 1; j <= n; ++j) fail *= 1.0 - static_cast<double>(k) / static_cast<double>(j);
  return 1.0 - fail;
}

bool majority_correct(const std::vector<SampleOutcome>& samples, int64_t k) {
  QAD_CHECK(k >= 1 && k <= static_cast<int64_t>(samples.size()), "maj@{}: only {} samples", k, samples.size());
  std::map<std::string, std::pair<int64_t, size_t>> votes;  // key -> (count, first sample)
  for (size_t i = 0; i < static_cast<size_t>(k); ++i) {
    if (samples[i].vote.empty()) continue;
    auto [it, fresh] = votes.try_emplace(samples[i].vote, 0, i);
    ++it->second.first;
  }
  if (votes.empty()) return false;
  auto best = votes.begin();
  for (auto it = votes.begin(); it != votes.end(); ++it) {
    const bool more = it->second.first > best->second.first;
    const bool tie_earlier = it->second.first == best->second.first && it->second.second < best->second.second;
    if (more || tie_earlier) best = it;
  }
  return samples[best->second.second].correct;
}

namespace {

template <typename F>
Estimate over_items(const std::vector<std::vector<SampleOutcome>>& items, F per_item) {
  std::vector<double> v;
  for (const auto& s : items) v.push_back(per_item(s));
  return mean_estimate(v);
}

int64_t correct_count(const std::vector<SampleOutcome>& s) {
  int64_t c = 0;
  for (const auto& x : s) c += x.correct ? 1 : 0;
  return c;
}

}  // namespace

Estimate avg_at_k(const std::vector<std::vector<SampleOutcome>>& items) {
  return over_items(items, [](const auto& s) {
    QAD_CHECK(!s.empty(), "avg@k: an item has no samples");
    return static_cast<double>(correct_count(s)) / static_cast<double>(s.size());
  });
}

Estimate pass_at(const std::vector<std::vector<SampleOutcome>>& items, int64_t k) {
  return over_items(items, [k](const auto& s) {
    return pass_at_k(static_cast<int64_t>(s.size()), correct_count(s), k);
  });
}

Estimate maj_at(const std::vector<std::vector<SampleOutcome>>& items, int64_t k) {
  return over_items(items, [k](const auto& s) { return majority_correct(s, k) ? 1.0 : 0.0; });
}

}  // namespace qad::eval
