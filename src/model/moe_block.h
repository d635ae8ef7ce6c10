// The sparse mixture-of-experts MLP of Qwen3-MoE ("model.layers.N.mlp"): a router Linear ("mlp.gate") and
// num_experts SwiGLU experts ("mlp.experts.{e}.gate_proj/up_proj/down_proj"), each a model::Linear so that
// quantization hooks, export and import treat expert projections like any other Linear. The expert group
// (ExpertMLP + MoeBlock) is architecture-neutral apart from its HF names; NemotronH-style blocks reuse
// router.h, moe_dispatch.h and ExpertMLP.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "model/config.h"
#include "model/layers.h"
#include "model/linear.h"
#include "model/router.h"

namespace qad::model {

// One expert: down(silu(gate(x)) * up(x)) with bias-free Linears of width `intermediate`.
class ExpertMLPImpl : public torch::nn::Module {
 public:
  ExpertMLPImpl(const std::string& prefix, int64_t hidden, int64_t intermediate);
  torch::Tensor forward(const torch::Tensor& x);
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(ExpertMLP);

class MoeBlockImpl : public torch::nn::Module {
 public:
  MoeBlockImpl(const ModelConfig& c, const std::string& prefix, int64_t layer);
  // x [B, T, H] -> [B, T, H]. Reads ctx.token_mask (padding never reaches an expert), appends the router
  // logits to ctx.router_logits when set, and with ctx.calibrate_all_experts also runs every expert on every
  // token first (outputs discarded) so that calibration sees every expert.
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx);

  int64_t layer() const { return layer_; }
  int64_t num_experts() const { return static_cast<int64_t>(expert_list.size()); }
  const RouterOptions& router_options() const { return router_; }

  Linear gate{nullptr};                 // the router: [num_experts, hidden], HF "mlp.gate.weight"
  torch::nn::ModuleList experts{nullptr};
  std::vector<ExpertMLP> expert_list;   // typed views of `experts`

 private:
  int64_t layer_;
  RouterOptions router_;
};
TORCH_MODULE(MoeBlock);

}  // namespace qad::model
