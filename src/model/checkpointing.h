// Activation checkpointing for one decoder layer or NemotronH block. LibTorch C++ has no torch.utils.checkpoint, so this is
// a custom autograd Function: forward runs the layer without recording a graph (keeping only its input),
// backward recomputes the layer with grad enabled and differentiates it.
#pragma once
#include <torch/torch.h>

#include "model/layers.h"

namespace qad::model {

// The layer's output, with gradients (to `x` and to the layer's trainable parameters) identical to an
// ordinary call. The layer must outlive the backward pass; `ctx` is copied (its cache must be null).
torch::Tensor checkpointed_layer(DecoderLayer& layer, const torch::Tensor& x, const AttentionContext& ctx);

class NemotronHBlockImpl;  // nemotron_h.h
// The same for a NemotronH block in training (no KV cache, no Mamba state): Mamba-2, attention, MLP or MoE.
torch::Tensor checkpointed_block(NemotronHBlockImpl& block, const torch::Tensor& x, const AttentionContext& ctx);

}  // namespace qad::model
