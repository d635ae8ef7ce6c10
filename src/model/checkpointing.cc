// Checkpointed decoder layer / NemotronH block as a custom autograd Function (see checkpointing.h).
#include "model/checkpointing.h"

#include "model/nemotron_h.h"
#include "util/error.h"

namespace qad::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// How each layer type runs on its input in training (no cache, no Mamba state).
torch::Tensor run_layer(DecoderLayerImpl* layer, const torch::Tensor& x, const AttentionContext& ctx) {
  return layer->forward(x, ctx);
}
torch::Tensor run_layer(NemotronHBlockImpl* layer, const torch::Tensor& x, const AttentionContext& ctx) {
  return layer->forward(x, ctx, /*state=*/nullptr);
}

template <typename LayerImpl>
struct CheckpointFunction : torch::autograd::Function<CheckpointFunction<LayerImpl>> {
  // The trainable parameters come in as inputs so that the node is part of the graph even when `x`
  // itself needs no gradient (frozen embeddings), and so that their gradients flow through this node.
  static torch::Tensor forward(AutogradContext* actx, torch::Tensor x, LayerImpl* layer,
                               const AttentionContext* ctx, torch::TensorList params) {
    actx->save_for_backward({x});
    actx->saved_data["layer"] = reinterpret_cast<int64_t>(layer);
    actx->saved_data["has_rope"] = ctx->cos.defined();  // NemotronH's attention has no RoPE
    if (ctx->cos.defined()) {
      actx->saved_data["cos"] = ctx->cos;
      actx->saved_data["sin"] = ctx->sin;
    }
    actx->saved_data["has_mask"] = ctx->mask.defined();
    if (ctx->mask.defined()) actx->saved_data["mask"] = ctx->mask;
    actx->saved_data["causal"] = ctx->causal;
    actx->saved_data["has_token_mask"] = ctx->token_mask.defined();
    if (ctx->token_mask.defined()) actx->saved_data["token_mask"] = ctx->token_mask;
    actx->saved_data["backend"] = static_cast<int64_t>(ctx->backend);
    actx->saved_data["fused"] = static_cast<int64_t>(ctx->fused);
    actx->saved_data["n_params"] = static_cast<int64_t>(params.size());
    torch::NoGradGuard no_grad;
    return run_layer(layer, x, *ctx);
  }

  static variable_list backward(AutogradContext* actx, variable_list grad_out) {
    auto* layer = reinterpret_cast<LayerImpl*>(actx->saved_data["layer"].toInt());
    AttentionContext ctx;
    if (actx->saved_data["has_rope"].toBool()) {
      ctx.cos = actx->saved_data["cos"].toTensor();
      ctx.sin = actx->saved_data["sin"].toTensor();
    }
    if (actx->saved_data["has_mask"].toBool()) ctx.mask = actx->saved_data["mask"].toTensor();
    ctx.causal = actx->saved_data["causal"].toBool();
    // The recompute routes like the forward did; router logits were collected there (router_logits stays null).
    if (actx->saved_data["has_token_mask"].toBool()) ctx.token_mask = actx->saved_data["token_mask"].toTensor();
    ctx.backend = static_cast<AttentionBackend>(actx->saved_data["backend"].toInt());
    ctx.fused = static_cast<FusedKernels>(actx->saved_data["fused"].toInt());
    const auto n_params = actx->saved_data["n_params"].toInt();

    auto x = actx->get_saved_variables()[0].detach().requires_grad_(true);
    std::vector<torch::Tensor> params;
    for (const auto& p : layer->parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
    QAD_CHECK(static_cast<int64_t>(params.size()) == n_params,
              "activation checkpointing: the layer's trainable parameters changed between forward and backward");
    torch::Tensor y;
    {
      torch::AutoGradMode grad(true);
      y = run_layer(layer, x, ctx);
    }
    std::vector<torch::Tensor> inputs = {x};
    inputs.insert(inputs.end(), params.begin(), params.end());
    auto grads = torch::autograd::grad({y}, inputs, {grad_out[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
    variable_list out = {grads[0], torch::Tensor(), torch::Tensor()};
    out.insert(out.end(), grads.begin() + 1, grads.end());
    return out;
  }
};

template <typename LayerImpl>
torch::Tensor checkpointed(LayerImpl* layer, const torch::Tensor& x, const AttentionContext& ctx) {
  QAD_CHECK(ctx.cache == nullptr, "activation checkpointing cannot be used with a KV cache");
  std::vector<torch::Tensor> params;
  for (const auto& p : layer->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  return CheckpointFunction<LayerImpl>::apply(x, layer, &ctx, torch::TensorList(params));
}

}  // namespace

torch::Tensor checkpointed_layer(DecoderLayer& layer, const torch::Tensor& x, const AttentionContext& ctx) {
  return checkpointed(layer.get(), x, ctx);
}

torch::Tensor checkpointed_block(NemotronHBlockImpl& block, const torch::Tensor& x, const AttentionContext& ctx) {
  return checkpointed(&block, x, ctx);
}

}  // namespace qad::model
