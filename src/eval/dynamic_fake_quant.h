// A stand-in PTQ for diagnostics: NVFP4 fake quantization of every Linear's weight and input except
// lm_head, each tensor with its own per-tensor amax (weights once; activations per call). No calibration
// data is needed, so `qad cka` / `qad eval` can compare "BF16 vs 4-bit" before the calibrated PTQ of
// src/quant exists. Weights and activations are quantized along K in 16-element blocks (docs/nvfp4.md).
#pragma once
#include "model/causal_lm.h"

namespace qad::eval {

// Installs the hook on every Linear except lm_head; returns how many Linears are quantized.
int64_t apply_dynamic_fake_quant(model::CausalLM& lm);

}  // namespace qad::eval
