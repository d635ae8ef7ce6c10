// NVFP4 with given (static) block scales: fake quantization and quantization of a tensor whose per-16-block E4M3
// scales are fixed codes instead of being derived from each block's amax, and the MSE search that chooses them
// (ModelOpt's static NVFP4 weight quantizer with its FP8 scale sweep). LibTorch tensor ops only, so one code path
// serves CPU and CUDA. Semantics: docs/nvfp4.md ("Static block scales"); the scalar rules are nvfp4/scales.h.
#pragma once
#include <torch/torch.h>

#include "nvfp4/fake_quantize_autograd.h"
#include "nvfp4/quantize.h"

namespace qad::nvfp4 {

// The E2M1 magnitude index (0..7) of float32 magnitudes |v| >= 0, ties to even, saturating at 6 (index 7); NaN -> 0.
torch::Tensor e2m1_magnitude_index(const torch::Tensor& magnitude);

// uint8 E4M3 codes -> their float32 values (exactly e4m3_decode of nvfp4/e4m3.h; 0x7F / 0xFF are NaN).
torch::Tensor decode_e4m3_codes(const torch::Tensor& codes);

// fake_quantize(x, global_amax) with the block scales given instead of derived: block_scales are uint8 E4M3 codes of
// shape block_scales_shape(x.sizes()) on x's device. Per element x^ = (e2m1(q) * s_b) * s_g with
// q = e2m1_rne(x / (s_b * s_g)) saturating at ±6 (x = ±0 stays ±0), s_b = decode(code), s_g = global_amax / 2688:
// the kernels' arithmetic, so with the codes quantize() derives it equals fake_quantize() bit for bit. A block
// holding NaN or ±Inf (or a non-finite s_g) comes out all NaN, as in fake_quantize. Output in x's dtype.
torch::Tensor fake_quantize_with_block_scales(const torch::Tensor& x, const torch::Tensor& block_scales,
                                              const torch::Tensor& global_amax);

// The same inside autograd: straight-through gradient into x (kClipped: zero where |x| > global_amax, the rule of
// fake_quantize_ste); no gradient into the scales, which stay fixed.
torch::Tensor fake_quantize_with_block_scales_ste(const torch::Tensor& x, const torch::Tensor& block_scales,
                                                  const torch::Tensor& global_amax,
                                                  StraightThrough mode = StraightThrough::kIdentity);

// quantize() with the given block scales: packed E2M1 codes (element 2i in the low nibble), the codes themselves as
// block_scales, and s_g. x must be finite (throws naming the op otherwise). dequantize() of the result equals
// fake_quantize_with_block_scales(x, ...) in float32.
QuantizedTensor quantize_with_block_scales(const torch::Tensor& x, const torch::Tensor& block_scales,
                                           const torch::Tensor& global_amax);

// The static block scales of x minimising each block's squared fake-quantization error: for every block every
// positive finite E4M3 code 0x01..0x7E (126 candidates, ModelOpt's FP8 scale sweep) is tried as s_b and the one
// with the least error sum_i (x_i - x^_i)^2 is kept (float64; the 16 terms summed in a fixed pairwise order,
// (e_i + e_i+8), then +4, +2, +1, so every device picks the same code). Ties go to the LARGER code (more headroom
// for weights that grow while the scales stay frozen). An all-zero block keeps the code 0x38 (1.0) that the dynamic
// rule stores (every candidate is exact there). x must be finite. uint8 codes of shape block_scales_shape(x).
torch::Tensor mse_block_scales(const torch::Tensor& x, const torch::Tensor& global_amax);

}  // namespace qad::nvfp4
