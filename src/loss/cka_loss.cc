// cka_loss: selects the valid (optionally subsampled) token rows once, then one feature-form CKA per layer.
#include "loss/cka_loss.h"

#include <algorithm>

#include "loss/token_rows.h"
#include "util/error.h"

namespace qad::loss {
namespace {

const torch::Tensor* find_layer(const NamedHidden& hidden, const std::string& name) {
  for (const auto& [n, t] : hidden) {
    if (n == name) return &t;
  }
  return nullptr;
}

std::string layer_names(const NamedHidden& hidden) {
  std::string s;
  for (const auto& [n, t] : hidden) {
    if (!s.empty()) s.append(", ");
    s.append(n);
  }
  return s.empty() ? "(none)" : s;
}

}  // namespace

CkaLossResult cka_loss(const NamedHidden& teacher_hidden, const NamedHidden& student_hidden, const torch::Tensor& mask,
                       const CkaLossOptions& options, torch::Generator* gen, std::optional<double> kl_value) {
  QAD_CHECK(options.subsample_tokens >= 0, "cka_loss: subsample_tokens must be >= 0 (0 = all), got {}",
            options.subsample_tokens);
  QAD_CHECK(!options.dynamic_balance || kl_value.has_value(),
            "cka_loss: dynamic balancing needs this step's KL value (pass kl_value)");
  QAD_CHECK(options.balance_max_factor > 0, "cka_loss: balance_max_factor must be > 0, got {}",
            options.balance_max_factor);
  std::vector<std::string> layers = options.layers;
  if (layers.empty()) {
    for (const auto& [n, t] : student_hidden) layers.push_back(n);
  }
  QAD_CHECK(!layers.empty(), "cka_loss: no layers to compare (the student produced no hidden states)");

  // Resolve and check all layers before computing anything.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs;
  for (const auto& name : layers) {
    const torch::Tensor* t = find_layer(teacher_hidden, name);
    const torch::Tensor* s = find_layer(student_hidden, name);
    QAD_CHECK(t != nullptr, "cka_loss: layer '{}' is missing from the teacher's hidden states (have: {})", name,
              layer_names(teacher_hidden));
    QAD_CHECK(s != nullptr, "cka_loss: layer '{}' is missing from the student's hidden states (have: {})", name,
              layer_names(student_hidden));
    QAD_CHECK(t->dim() == 3 && s->dim() == 3 && t->size(0) == s->size(0) && t->size(1) == s->size(1),
              "cka_loss: layer '{}': teacher {} and student {} must both be [batch, tokens, hidden] over the same "
              "tokens",
              name, detail::shape_str(t->sizes()), detail::shape_str(s->sizes()));
    QAD_CHECK(pairs.empty() || (t->size(0) == pairs[0].first.size(0) && t->size(1) == pairs[0].first.size(1)),
              "cka_loss: layer '{}' has {} tokens where the first layer has {}", name,
              detail::shape_str(t->sizes().slice(0, 2)), detail::shape_str(pairs[0].first.sizes().slice(0, 2)));
    pairs.emplace_back(t->detach(), *s);
  }
  const auto& first = pairs[0].second;
  const auto device = first.device();
  const int64_t n_rows = first.size(0) * first.size(1);

  auto keep = detail::mask_to_keep(mask, first.sizes().slice(0, 2), "cka_loss");
  if (keep.defined()) keep = keep.to(device);
  auto rows = detail::select_rows(keep, n_rows);
  if (options.subsample_tokens > 0 && options.subsample_tokens < rows.count) {
    auto perm = gen ? torch::randperm(rows.count, *gen, torch::kLong) : torch::randperm(rows.count, torch::kLong);
    auto pick = std::get<0>(perm.narrow(0, 0, options.subsample_tokens).sort()).to(device);
    rows.index = rows.index.defined() ? rows.index.index_select(0, pick) : pick;
    rows.count = options.subsample_tokens;
  }
  const int64_t need = options.estimator == CkaEstimator::kDebiased ? 4 : 2;
  QAD_CHECK(rows.count >= need, "cka_loss: only {} valid tokens in this batch; CKA needs at least {}", rows.count,
            need);

  std::vector<torch::Tensor> ckas;
  for (auto& [t, s] : pairs) {
    auto x = rows.take(t.reshape({n_rows, t.size(2)}), 0, rows.count);
    auto y = rows.take(s.reshape({n_rows, s.size(2)}), 0, rows.count);
    ckas.push_back(linear_cka(x, y, options.estimator));
  }
  auto stacked = torch::stack(ckas);
  auto term = (1 - stacked).mean();
  auto host = stacked.detach().to(torch::kCPU, torch::kFloat64);

  CkaLossResult result;
  double term_value = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const double v = host[static_cast<int64_t>(i)].item<double>();
    result.per_layer_cka.emplace_back(layers[i], v);
    term_value += (1 - v) / static_cast<double>(layers.size());
  }
  if (options.dynamic_balance) {
    const double kl = std::max(0.0, *kl_value);
    result.balance_factor = kl == 0           ? 0.0
                            : term_value > 0  ? std::min(kl / term_value, options.balance_max_factor)
                                              : options.balance_max_factor;
  }
  result.loss = term * (options.weight * result.balance_factor);
  return result;
}

}  // namespace qad::loss
