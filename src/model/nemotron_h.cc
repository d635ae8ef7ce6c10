// NemotronH blocks (see nemotron_h.h).
#include "model/nemotron_h.h"

#include <limits>

#include "model/moe_dispatch.h"
#include "util/error.h"

namespace qad::model {

Relu2MLPImpl::Relu2MLPImpl(const std::string& prefix, int64_t hidden, int64_t intermediate, bool bias) {
  up_proj = register_module("up_proj", Linear(prefix + ".up_proj", hidden, intermediate, bias));
  down_proj = register_module("down_proj", Linear(prefix + ".down_proj", intermediate, hidden, bias));
}

torch::Tensor Relu2MLPImpl::forward(const torch::Tensor& x) { return down_proj(torch::relu(up_proj(x)).square()); }

GroupRouting group_topk_route(const torch::Tensor& logits, const torch::Tensor& correction_bias,
                              const NemotronHMoeConfig& o) {
  QAD_CHECK(logits.dim() == 2 && logits.size(1) == o.num_experts, "NemotronH router: logits must be [tokens, {}]",
            o.num_experts);
  const int64_t n = logits.size(0), e = o.num_experts, per_group = e / o.n_group;
  auto scores = torch::sigmoid(logits.to(torch::kFloat32));
  auto choice = scores + correction_bias.to(torch::kFloat32);
  auto group_scores = std::get<0>(choice.view({n, o.n_group, per_group}).topk(2, -1)).sum(-1);  // [N, G]
  auto group_idx = std::get<1>(group_scores.topk(o.topk_group, -1));
  auto group_keep = torch::zeros_like(group_scores).scatter_(1, group_idx, 1.0).to(torch::kBool);
  auto expert_keep = group_keep.unsqueeze(-1).expand({n, o.n_group, per_group}).reshape({n, e});
  auto masked = choice.masked_fill(expert_keep.logical_not(), -std::numeric_limits<float>::infinity());
  auto idx = std::get<1>(masked.topk(o.top_k, -1));
  idx = std::get<0>(idx.sort(-1));  // transformers adds expert outputs in expert order
  auto w = scores.gather(1, idx);
  if (o.norm_topk_prob) w = w / (w.sum(-1, /*keepdim=*/true) + 1e-20);
  return {idx, w * o.routed_scaling_factor};
}

NemotronHMoeImpl::NemotronHMoeImpl(const ModelConfig& c, const std::string& prefix, int64_t layer) : layer_(layer) {
  QAD_CHECK(c.hybrid && c.hybrid->moe, "NemotronH MoE: layer {} is a MoE block but the config has no MoE keys", layer);
  cfg_ = *c.hybrid->moe;
  gate = register_module("gate", Linear(prefix + ".gate", c.hidden_size, cfg_.num_experts, false));
  // A buffer in transformers; a parameter without gradient here so that it loads and saves with the weights.
  correction_bias =
      gate->register_parameter("e_score_correction_bias", torch::zeros({cfg_.num_experts}), /*requires_grad=*/false);
  experts = register_module("experts", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg_.num_experts; ++i) {
    expert_list.emplace_back(prefix + ".experts." + std::to_string(i), c.hidden_size, cfg_.intermediate_size, false);
    experts->push_back(expert_list.back());
  }
  shared_experts = register_module("shared_experts", Relu2MLP(prefix + ".shared_experts", c.hidden_size,
                                                              cfg_.shared_intermediate_size, c.mlp_bias));
}

torch::Tensor NemotronHMoeImpl::forward(const torch::Tensor& x, const AttentionContext& ctx) {
  const int64_t hidden = x.size(-1);
  auto flat = x.reshape({-1, hidden});
  torch::Tensor keep;
  if (ctx.token_mask.defined()) keep = ctx.token_mask.reshape({-1}).to(x.device(), torch::kBool);
  if (ctx.calibrate_all_experts) calibrate_every_expert(expert_list, flat, keep);
  // NemotronHTopkRouter: the router runs in FP32 whatever the model dtype (the hook of a quantized router is not
  // applied; ModelOpt's defaults leave routers unquantized).
  auto logits = torch::linear(flat.to(torch::kFloat32), gate->weight.to(torch::kFloat32));
  if (ctx.router_logits != nullptr) ctx.router_logits->emplace_back(layer_, logits);
  auto routing = group_topk_route(logits, correction_bias, cfg_);
  const auto d = dispatch_by_expert(routing.experts, num_experts(), keep);
  // NemotronHExperts: output x weight and the sum over a token's experts in FP32 (the weights' dtype), then the
  // cast to the model dtype and the shared expert added.
  auto out_rows = run_experts(expert_list, flat, d, x.options()).to(torch::kFloat32);
  out_rows = out_rows * routing.weights.reshape({-1}).index_select(0, d.slot_of_row).unsqueeze(1);
  auto routed = combine_by_token(out_rows, d).to(x.scalar_type()).reshape(x.sizes());
  return routed + shared_experts(x);
}

NemotronHBlockImpl::NemotronHBlockImpl(const ModelConfig& c, int64_t layer) {
  QAD_CHECK(c.hybrid.has_value(), "NemotronHBlock: the config has no NemotronH section");
  type = c.hybrid->blocks.at(static_cast<size_t>(layer));
  const std::string prefix = "backbone.layers." + std::to_string(layer) + ".mixer";
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  switch (type) {
    case BlockType::kMamba: mamba = register_module("mixer", Mamba2Mixer(c, prefix)); break;
    case BlockType::kAttention: attention = register_module("mixer", Attention(c, prefix, layer)); break;
    case BlockType::kMlp:
      mlp = register_module("mixer", Relu2MLP(prefix, c.hidden_size, c.intermediate_size, c.mlp_bias));
      break;
    case BlockType::kMoe: moe = register_module("mixer", std::make_shared<NemotronHMoeImpl>(c, prefix, layer)); break;
  }
}

torch::Tensor NemotronHBlockImpl::forward(const torch::Tensor& x, const AttentionContext& ctx, MambaState* state) {
  auto h = norm(x);
  switch (type) {
    case BlockType::kMamba: return x + mamba->forward(h, ctx.token_mask, state);
    case BlockType::kAttention: return x + attention(h, ctx);
    case BlockType::kMlp: return x + mlp(h);
    case BlockType::kMoe: return x + moe->forward(h, ctx);
  }
  return x;
}

}  // namespace qad::model
