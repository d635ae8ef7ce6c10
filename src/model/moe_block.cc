// Sparse MoE MLP: route, group tokens by expert, one GEMM chain per expert, weighted sum back per token.
// Checked against transformers' Qwen3MoeSparseMoeBlock (tests/model/moe_test.cc, fixtures from 5.17).
#include "model/moe_block.h"

#include "model/moe_dispatch.h"
#include "util/error.h"

namespace qad::model {

ExpertMLPImpl::ExpertMLPImpl(const std::string& prefix, int64_t hidden, int64_t intermediate) {
  gate_proj = register_module("gate_proj", Linear(prefix + ".gate_proj", hidden, intermediate, false));
  up_proj = register_module("up_proj", Linear(prefix + ".up_proj", hidden, intermediate, false));
  down_proj = register_module("down_proj", Linear(prefix + ".down_proj", intermediate, hidden, false));
}

torch::Tensor ExpertMLPImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

MoeBlockImpl::MoeBlockImpl(const ModelConfig& c, const std::string& prefix, int64_t layer) : layer_(layer) {
  QAD_CHECK(c.moe.has_value(), "MoeBlock: layer {} is sparse but the config has no MoE section", layer);
  const auto& m = *c.moe;
  router_ = {m.top_k, m.norm_topk_prob};
  gate = register_module("gate", Linear(prefix + ".gate", c.hidden_size, m.num_experts, false));
  experts = register_module("experts", torch::nn::ModuleList());
  for (int64_t e = 0; e < m.num_experts; ++e) {
    expert_list.emplace_back(prefix + ".experts." + std::to_string(e), c.hidden_size, m.intermediate_size);
    experts->push_back(expert_list.back());
  }
}

torch::Tensor MoeBlockImpl::forward(const torch::Tensor& x, const AttentionContext& ctx) {
  const int64_t hidden = x.size(-1);
  auto flat = x.reshape({-1, hidden});
  torch::Tensor keep;
  if (ctx.token_mask.defined()) keep = ctx.token_mask.reshape({-1}).to(x.device(), torch::kBool);
  if (ctx.calibrate_all_experts) calibrate_every_expert(expert_list, flat, keep);
  auto logits = gate(flat);
  if (ctx.router_logits != nullptr) ctx.router_logits->emplace_back(layer_, logits);
  auto routing = softmax_topk(logits, router_);
  // Ascending expert order within each token: transformers adds expert outputs in expert order.
  auto [experts_sorted, perm] = torch::sort(routing.experts, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  auto weights = routing.weights.gather(1, perm);
  const auto d = dispatch_by_expert(experts_sorted, num_experts(), keep);

  auto out_rows = run_experts(expert_list, flat, d, x.options());
  // transformers: expert output x routing weight in the model dtype, then the per-token sum.
  out_rows = out_rows * weights.reshape({-1}).index_select(0, d.slot_of_row).unsqueeze(1);
  return combine_by_token(out_rows, d).reshape(x.sizes());
}

}  // namespace qad::model
