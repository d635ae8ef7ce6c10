// NemotronH's blocks ("model.layers.N"): a pre-norm residual block, x + mixer(norm(x)), whose one mixer is a
// Mamba-2 mixer (mamba2.h), attention without RoPE (layers.h's Attention, no cos/sin), a relu2 MLP or the
// NemotronH MoE (sigmoid router with correction bias, group-limited top-k, routed scaling, relu2 experts, one
// shared relu2 MLP). Numerics follow transformers 5.17's modeling_nemotron_h operation for operation.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/layers.h"
#include "model/linear.h"
#include "model/mamba2.h"

namespace qad::model {

// down(relu(up(x))^2): NemotronHMLP (the "-" blocks, the shared expert) and each routed expert.
class Relu2MLPImpl : public torch::nn::Module {
 public:
  Relu2MLPImpl(const std::string& prefix, int64_t hidden, int64_t intermediate, bool bias);
  torch::Tensor forward(const torch::Tensor& x);
  Linear up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Relu2MLP);

struct GroupRouting {
  torch::Tensor experts;  // int64 [N, k], ascending expert order per row
  torch::Tensor weights;  // FP32 [N, k]: sigmoid scores of the chosen experts, renormalised and scaled
};

// NemotronHMoE.route_tokens_to_experts from FP32 router logits [N, E]: scores = sigmoid(logits); the choice reads
// scores + correction_bias: groups ranked by the sum of their two best choice values, the best topk_group groups
// kept, the top_k experts of those by choice value; their weights are the scores (without the bias),
// divided by their sum + 1e-20 when norm_topk_prob, times routed_scaling_factor.
GroupRouting group_topk_route(const torch::Tensor& logits, const torch::Tensor& correction_bias,
                              const NemotronHMoeConfig& o);

class NemotronHMoeImpl : public torch::nn::Module {
 public:
  NemotronHMoeImpl(const ModelConfig& c, const std::string& prefix, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx);
  int64_t num_experts() const { return static_cast<int64_t>(expert_list.size()); }

  Linear gate{nullptr};           // the router [E, hidden]; also holds "e_score_correction_bias" [E] (no gradient)
  torch::Tensor correction_bias;  // that parameter of `gate`
  torch::nn::ModuleList experts{nullptr};
  std::vector<Relu2MLP> expert_list;
  Relu2MLP shared_experts{nullptr};

 private:
  int64_t layer_;
  NemotronHMoeConfig cfg_;
};

class NemotronHBlockImpl : public torch::nn::Module {
 public:
  NemotronHBlockImpl(const ModelConfig& c, int64_t layer);
  // state: this block's Mamba state when generating (Mamba blocks only), else null.
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx, MambaState* state = nullptr);

  BlockType type;
  RMSNorm norm{nullptr};
  // Exactly one is set, registered as "mixer".
  Mamba2Mixer mamba{nullptr};
  Attention attention{nullptr};
  Relu2MLP mlp{nullptr};
  std::shared_ptr<NemotronHMoeImpl> moe;
};
TORCH_MODULE(NemotronHBlock);

}  // namespace qad::model
