// The data-parallel seam: which rank this process is, and the one place where gradients are reduced across
// ranks. Single-process today (the reduction is a no-op); the multi-GPU issue fills reduce_gradients in and
// nothing else in the trainer has to change.
#pragma once
#include <torch/torch.h>

#include "train/config.h"
#include "train/optimizer.h"

namespace qad::train {

// Sums (then averages) every parameter's gradient over the ranks. Called once per optimizer step, after
// all micro-batches' backward passes and before the gradient norm is taken.
void reduce_gradients(AdamW& optimizer, const DistConfig& dist);

// Only rank 0 writes checkpoints, metrics and exports.
inline bool is_writer(const DistConfig& dist) { return dist.rank == 0; }

}  // namespace qad::train
