// What a fused kernel does to its output on behalf of the Linear that reads it: NVFP4 fake quantization with
// a fixed (calibrated) global amax, and which straight-through estimator its backward uses.
#pragma once
#include <torch/torch.h>

namespace qad::fused {

struct OutputQuant {
  torch::Tensor amax;    // float32 scalar on the tensor's device; undefined = no quantization
  bool clipped = false;  // clipped STE: zero gradient where |pre-quantization value| > amax

  bool enabled() const { return amax.defined(); }
};

}  // namespace qad::fused
