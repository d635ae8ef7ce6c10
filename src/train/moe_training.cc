// MoE-specific training pieces (see moe_training.h).
#include "train/moe_training.h"

#include "model/router.h"
#include "util/error.h"

namespace qad::train {

bool is_moe(const model::CausalLM& lm) { return lm->config().moe.has_value(); }

std::vector<std::pair<std::string, torch::Tensor>> trainable_tensors(model::CausalLM& lm, bool freeze_routers) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& [name, t] : lm->hf_tensors()) {
    // NemotronH's router correction bias: a buffer in transformers, never trained by gradients.
    if (name.ends_with(".e_score_correction_bias")) continue;
    if (freeze_routers && (name.ends_with(".mlp.gate.weight") || name.ends_with(".mixer.gate.weight"))) {
      t.set_requires_grad(false);
      continue;
    }
    out.emplace_back(name, t);
  }
  return out;
}

torch::Tensor router_balance_loss(const model::CausalLM& lm, const model::ForwardOutput& out) {
  QAD_CHECK(is_moe(lm), "loss.router_balance: the student is not a mixture-of-experts model");
  std::vector<torch::Tensor> logits;
  for (const auto& [layer, l] : out.router_logits) logits.push_back(l);
  const auto& m = *lm->config().moe;
  return model::load_balancing_loss(logits, m.num_experts, m.top_k);
}

void RouterAgreement::add(const model::ForwardOutput& s, const model::ForwardOutput& t, int64_t top_k,
                          const torch::Tensor& tokens) {
  QAD_CHECK(s.router_logits.size() == t.router_logits.size(),
            "router agreement: student and teacher have {} and {} MoE layers", s.router_logits.size(),
            t.router_logits.size());
  auto keep = tokens.reshape({-1}).to(torch::kBool);
  const int64_t n = keep.sum().item<int64_t>();
  if (n == 0) return;
  for (size_t i = 0; i < s.router_logits.size(); ++i) {
    const auto& [layer, sl] = s.router_logits[i];
    QAD_CHECK(layer == t.router_logits[i].first, "router agreement: layer {} vs {}", layer, t.router_logits[i].first);
    auto se = std::get<1>(sl.topk(top_k, -1)), te = std::get<1>(t.router_logits[i].second.topk(top_k, -1));
    const double overlap = model::topk_overlap(se, te, keep.to(se.device())).item<double>();
    auto [it, fresh] = sums_.emplace(layer, std::make_pair(0.0, int64_t{0}));
    if (fresh) order_.push_back(layer);
    it->second.first += overlap * static_cast<double>(n);
    it->second.second += n;
  }
}

std::vector<std::pair<std::string, double>> RouterAgreement::per_layer() const {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& l : order_) {
    const auto& [sum, n] = sums_.at(l);
    out.emplace_back(l, sum / static_cast<double>(n));
  }
  return out;
}

std::optional<double> RouterAgreement::mean() const {
  if (order_.empty()) return std::nullopt;
  double sum = 0;
  for (const auto& [l, v] : per_layer()) sum += v;
  return sum / static_cast<double>(order_.size());
}

}  // namespace qad::train
