// FP8 E4M3 on tensors: rounding onto the E4M3 grid, and the per-tensor FP8 fake quantization of the KV cache
// (`e4m3(x / scale) * scale`, what an engine's FP8 KV cache stores and reads back) with its straight-through
// autograd op. LibTorch tensor ops only, so the same code runs on CPU and CUDA. Semantics: docs/nvfp4.md
// ("FP8 E4M3 on tensors"); the scalar codec is nvfp4/e4m3.h.
#pragma once
#include <torch/torch.h>

#include "nvfp4/fake_quantize_autograd.h"

namespace qad::nvfp4 {

// float32 -> float32: the value of the nearest E4M3 (fn) number, ties to even, saturating at ±448 (±Inf too),
// NaN stays NaN, -0 stays -0. Equals e4m3_decode(e4m3_encode(x)) (CUDA's __NV_SATFINITE conversion) for every x.
torch::Tensor e4m3_round(const torch::Tensor& x);

// The FP8 KV-cache fake quantization: e4m3_round(x / scale) * scale in float32 (a true division by the
// float32 scalar `scale`, a tensor on any device), then one rounding to x's dtype. `scale` must be > 0.
torch::Tensor fp8_fake_quantize(const torch::Tensor& x, const torch::Tensor& scale);

// fp8_fake_quantize inside autograd: identity gradient (kIdentity), or zero gradient where |x| > 448 * scale,
// the saturated elements (kClipped). No gradient flows into `scale` (it is a fixed, calibrated constant).
torch::Tensor fp8_fake_quantize_ste(const torch::Tensor& x, const torch::Tensor& scale,
                                    StraightThrough mode = StraightThrough::kIdentity);

}  // namespace qad::nvfp4
