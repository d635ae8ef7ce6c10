// Activation checkpointing for one decoder layer. LibTorch C++ has no torch.utils.checkpoint, so this is
// a custom autograd Function: forward runs the layer without recording a graph (keeping only its input),
// backward recomputes the layer with grad enabled and differentiates it.
#pragma once
#include <torch/torch.h>

#include "model/layers.h"

namespace qad::model {

// The layer's output, with gradients (to `x` and to the layer's trainable parameters) identical to an
// ordinary call. The layer must outlive the backward pass; `ctx` is copied (its cache must be null).
torch::Tensor checkpointed_layer(DecoderLayer& layer, const torch::Tensor& x, const AttentionContext& ctx);

}  // namespace qad::model
