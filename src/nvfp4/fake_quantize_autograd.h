// Fake quantization inside autograd: the forward is nvfp4::fake_quantize, the backward a
// straight-through estimator (gradients pass as if the op were the identity). The clipped variant
// zeroes the gradient where |x| > amax, as ModelOpt's optional clipped STE does.
#pragma once
#include <torch/torch.h>

namespace qad::nvfp4 {

enum class StraightThrough { kIdentity, kClipped };

torch::Tensor fake_quantize_ste(const torch::Tensor& x, const torch::Tensor& global_amax,
                                StraightThrough mode = StraightThrough::kIdentity);

}  // namespace qad::nvfp4
