// What training does differently for mixture-of-experts students: routers optionally frozen, the optional
// load-balancing loss (off by default: the teacher's routing is the target, and KL already pulls the student's
// routing towards it), and per-layer router agreement with the teacher (top-k overlap) for validation.
// Dense models pass through every function unchanged.
#pragma once
#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/causal_lm.h"

namespace qad::train {

bool is_moe(const model::CausalLM& lm);

// The parameters the optimizer trains (HF names): all of them, or all but the routers ("*.mlp.gate.weight"),
// which are then set requires_grad(false) so that no gradient is computed for them.
std::vector<std::pair<std::string, torch::Tensor>> trainable_tensors(model::CausalLM& lm, bool freeze_routers);

// The load-balancing loss (model/router.h) over the student's forward's router logits.
torch::Tensor router_balance_loss(const model::CausalLM& lm, const model::ForwardOutput& out);

// Token-weighted top-k overlap between a student's and a teacher's routing, per MoE layer, over validation.
class RouterAgreement {
 public:
  // router logits of one forward each ("layers.N" -> [B*T, E]); `tokens` bool [B, T] selects the counted ones.
  void add(const model::ForwardOutput& student, const model::ForwardOutput& teacher, int64_t top_k,
           const torch::Tensor& tokens);
  std::vector<std::pair<std::string, double>> per_layer() const;  // layer order
  std::optional<double> mean() const;

 private:
  std::map<std::string, std::pair<double, int64_t>> sums_;  // layer -> (overlap x tokens, tokens)
  std::vector<std::string> order_;
};

}  // namespace qad::train
