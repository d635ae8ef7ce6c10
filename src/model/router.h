// Softmax top-k routing, the router of Qwen3-MoE (and Mixtral / Qwen2-MoE / OLMoE): which k experts each
// token goes to and with what weight. Kept apart from the MoE block so that other MoE architectures reuse it.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace qad::model {

struct RouterOptions {
  int64_t top_k = 1;
  bool norm_topk_prob = false;  // renormalise the k selected probabilities to sum to 1
};

struct Routing {
  torch::Tensor experts;  // int64 [N, k], the selected experts (descending probability, as torch.topk)
  torch::Tensor weights;  // [N, k] in the logits' dtype: the selected probabilities (renormalised if asked)
};

// transformers' Qwen3MoeTopKRouter.forward from the router logits [N, E] (the gate Linear's output, model
// dtype): softmax in FP32, top-k of the FP32 probabilities, optional renormalisation in FP32, then the cast
// of the weights back to the logits' dtype. Differentiable in `logits` through the weights.
Routing softmax_topk(const torch::Tensor& logits, const RouterOptions& options);

// Mean over tokens of |top-k(a) ∩ top-k(b)| / k for two routings' expert sets ([N, k] each), counting only
// rows where `keep` (bool [N]) is set when given: 1 when the two routers pick the same experts everywhere.
torch::Tensor topk_overlap(const torch::Tensor& experts_a, const torch::Tensor& experts_b,
                           const torch::Tensor& keep = {});

// The Switch-Transformer load-balancing loss exactly as transformers' load_balancing_loss_func (no attention
// mask), computed in FP32: with p = softmax(logits) over all MoE layers' tokens concatenated [N, E] and f[j, e] the share of
// tokens whose j-th choice is e, E * sum_{j,e} f[j, e] * mean_n p[n, e]. 1.0 x k for perfectly even routing.
torch::Tensor load_balancing_loss(const std::vector<torch::Tensor>& router_logits, int64_t num_experts,
                                  int64_t top_k);

}  // namespace qad::model
