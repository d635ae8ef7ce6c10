// Softmax top-k routing and the two statistics training reads from it (see router.h).
#include "model/router.h"

#include "util/error.h"

namespace qad::model {

Routing softmax_topk(const torch::Tensor& logits, const RouterOptions& o) {
  QAD_CHECK(logits.dim() == 2, "router: logits must be [tokens, experts], got {} dims", logits.dim());
  QAD_CHECK(o.top_k >= 1 && o.top_k <= logits.size(1), "router: top_k {} must be in [1, {}]", o.top_k, logits.size(1));
  auto probs = torch::softmax(logits, -1, torch::kFloat32);
  auto [top, idx] = probs.topk(o.top_k, -1);
  if (o.norm_topk_prob) top = top / top.sum(-1, /*keepdim=*/true);
  return {idx, top.to(logits.scalar_type())};
}

torch::Tensor topk_overlap(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& keep) {
  QAD_CHECK(a.sizes() == b.sizes() && a.dim() == 2, "topk_overlap: expert sets must have the same [N, k] shape");
  const int64_t k = a.size(1);
  // [N, k, 1] == [N, 1, k]: each of a's experts found among b's (experts within one row are distinct).
  auto hits = a.unsqueeze(2).eq(b.unsqueeze(1)).any(2).sum(1).to(torch::kFloat64) / static_cast<double>(k);
  if (keep.defined()) hits = hits.masked_select(keep.reshape({-1}).to(hits.device(), torch::kBool));
  return hits.numel() > 0 ? hits.mean() : torch::ones({}, hits.options());
}

torch::Tensor load_balancing_loss(const std::vector<torch::Tensor>& router_logits, int64_t num_experts,
                                  int64_t top_k) {
  QAD_CHECK(!router_logits.empty(), "load_balancing_loss: the model returned no router logits (no MoE layer)");
  // In FP32 whatever the model dtype (transformers stays in the logits' dtype; identical for FP32 models).
  auto probs = torch::softmax(torch::cat(router_logits, 0).to(torch::kFloat32), -1);
  auto selected = std::get<1>(probs.topk(top_k, -1));
  auto mask = torch::one_hot(selected, num_experts).to(probs.scalar_type());  // [N, k, E]
  auto tokens_per_expert = mask.mean(0);                                      // [k, E]
  auto prob_per_expert = probs.mean(0);                                       // [E]
  return (tokens_per_expert * prob_per_expert.unsqueeze(0)).sum() * static_cast<double>(num_experts);
}

}  // namespace qad::model
