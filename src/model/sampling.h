// Token selection for generation on any device: greedy (argmax, first index on ties) or sampling with
// temperature / top-k / top-p. Sampling draws from counter-based random streams: each generated sequence
// has a key made from (seed, item, sample index), and its draw at step t is a hash of (key, t). So a
// sequence's random numbers never depend on which other sequences share its batch, on its slot, or on the
// device (the hash is integer arithmetic that CPU and CUDA compute identically). docs/eval.md "Sampling".
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace qad::model {

struct SamplingOptions {
  bool greedy = true;        // argmax; else sample
  double temperature = 1.0;  // sampling: > 0
  int64_t top_k = 0;         // sampling: keep the k most likely tokens (0 = all)
  double top_p = 1.0;        // sampling: keep the smallest set of most likely tokens with mass >= top_p
  uint64_t seed = 0;
};

// Throws qad::Error naming the option when a value is out of range.
void check_sampling_options(const SamplingOptions& o);

// A sequence's stream key (64 bits) from the seed, the item's index and the sample index.
uint64_t stream_key(uint64_t seed, uint64_t item, uint64_t sample);

// Uniform draws in (0, 1), FP64 [B], for streams `keys` (int64 [B], the 64-bit keys' bit patterns) at steps
// `steps` (int64 [B], >= 0): 53 random bits each, on the keys' device.
torch::Tensor stream_uniforms(const torch::Tensor& keys, const torch::Tensor& steps);
// The same draw computed on the host (the reference the tensor version is tested against).
double stream_uniform(uint64_t key, int64_t step);

// Next tokens, int64 [B] on the logits' device, from logits [B, V] (any dtype): argmax when greedy, else
// inverse-CDF sampling of the filtered distribution with each row's uniform draw.
torch::Tensor select_tokens(const torch::Tensor& logits, const SamplingOptions& o, const torch::Tensor& keys,
                            const torch::Tensor& steps);

}  // namespace qad::model
