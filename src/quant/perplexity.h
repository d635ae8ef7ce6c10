// Held-out perplexity of a causal LM on token documents: the PTQ yardstick (FP32 vs NVFP4-max vs NVFP4-mse).
#pragma once
#include <cstdint>
#include <vector>

#include "model/causal_lm.h"

namespace qad::quant {

struct NllResult {
  double nll_sum = 0;  // natural log, summed over predicted tokens
  int64_t tokens = 0;  // predicted tokens (each document's tokens after its first)
  double mean() const { return tokens ? nll_sum / static_cast<double>(tokens) : 0.0; }
  double perplexity() const;
};

// Each document (ids, BOS first if the model uses one) is run on its own, in windows of at most `max_len` tokens;
// every token after the first of a window is predicted from the ones before it. FP64 accumulation.
NllResult heldout_nll(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& documents, int64_t max_len = 512);

}  // namespace qad::quant
