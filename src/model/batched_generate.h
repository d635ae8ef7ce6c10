// Continuous-batching generation: every request's prompt is prefilled into a slot of a SlotKVCache, all
// slots decode together one token per forward, and a slot whose sequence finished is refilled by the next
// waiting prompt. Token selection, stop tests and the outputs stay on the device; the host looks at the
// finished flags once every `check_every` steps (one small copy), so there is no per-token sync.
// Greedy outputs equal one-prompt-at-a-time generation: each sequence has its own positions (no padding
// inside it) and its keep mask hides every other cached position exactly. docs/eval.md "Generation".
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "model/sampling.h"

namespace qad::model {

struct GenerationRequest {
  std::vector<int64_t> prompt;    // token ids, BOS included where the model wants one; not empty
  uint64_t item = 0, sample = 0;  // with the seed, name this sequence's random stream
};

struct BatchedGenerateOptions {
  int64_t max_new_tokens = 32;
  SamplingOptions sampling;
  // A sequence stops after emitting one of these (kept as its last token).
  std::vector<int64_t> stop_ids;
  // Sequences decoded together. 0 = planned from memory (CUDA: free memory after the weights; CPU: 64),
  // never more than there are requests.
  int64_t max_slots = 0;
  double kv_memory_fraction = 0.7;  // CUDA planning: the share of free memory the KV cache may take
  int64_t check_every = 8;          // decode steps between the host's looks at finished sequences
  int64_t prefill_tokens = 8192;    // prompt tokens (padded) per prefill forward
  AttentionBackend attention = AttentionBackend::kAuto;
  bool cuda_graphs = true;  // CUDA: replay each decode step from a graph per attention-span bucket
  std::function<void(int64_t done, int64_t total)> on_progress;  // after each batch of finished sequences
};

struct GenerationOutput {
  std::vector<int64_t> new_ids;  // generated tokens, the stop token included
  bool stopped = false;          // a stop token ended it; false: cut off at max_new_tokens
};

struct GenerateStats {
  int64_t slots = 0, capacity = 0;  // the KV cache: sequences x tokens per sequence
  int64_t decode_steps = 0, prefill_forwards = 0, compactions = 0;
  double kv_cache_gb = 0;
  int64_t graph_replays = 0;  // decode steps replayed from CUDA graphs
  std::string graph_failure;  // why graphs were switched off ("" = they were not)
};

// Outputs in request order.
std::vector<GenerationOutput> generate_batched(CausalLM& lm, const std::vector<GenerationRequest>& requests,
                                               const BatchedGenerateOptions& options, GenerateStats* stats = nullptr);

// The slot count the planner picks for `requests` sequences of up to `tokens_per_sequence` tokens.
int64_t plan_slots(const ModelConfig& config, torch::Device device, torch::ScalarType dtype, int64_t requests,
                   int64_t tokens_per_sequence, const BatchedGenerateOptions& options);

}  // namespace qad::model
