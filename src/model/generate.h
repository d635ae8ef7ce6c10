// Autoregressive generation, greedy or temperature / top-k / top-p sampling, with per-sequence stop tokens:
// the simple interface to the continuous-batching engine (batched_generate.h). Prompt i samples from the
// random stream (seed, item i, sample 0) (sampling.h).
#pragma once
#include <cstdint>
#include <vector>

#include "model/causal_lm.h"

namespace qad::model {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  bool greedy = true;        // argmax (first index on ties); else sample
  double temperature = 1.0;  // sampling only; > 0
  int64_t top_k = 0;         // sampling only; 0 = no limit
  double top_p = 1.0;        // sampling only; nucleus mass in (0, 1]
  uint64_t seed = 0;         // sampling generator seed
  // A sequence stops after emitting any of these (the stop token is kept in its output). stories260K
  // ends stories with BOS (1), not EOS: pass both.
  std::vector<int64_t> stop_ids;
  int64_t pad_id = 0;    // unused (the engine pads nothing that is attended to); kept for source compatibility
  int64_t max_slots = 0; // sequences decoded together; 0 = planned from free memory
  AttentionBackend attention = AttentionBackend::kAuto;
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> new_ids;  // per prompt, the generated tokens only
  std::vector<bool> stopped;                  // true where a stop token ended the sequence
};

GenerateResult generate(CausalLM& lm, const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options);

// Next tokens [B] from last-position logits [B, V] (any device/dtype) under `options`.
torch::Tensor select_next_tokens(const torch::Tensor& logits, const GenerateOptions& options, torch::Generator& gen);

}  // namespace qad::model
