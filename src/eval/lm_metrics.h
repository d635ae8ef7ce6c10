// Teacher-forced metrics over a token stream: perplexity of the model and, with a teacher,
// KL(teacher || model) and top-1 agreement, all averaged over the same scored target tokens.
// Definitions: docs/eval.md "Perplexity, KL and agreement". The sums come from loss/token_metrics.h, which the
// trainer's validation uses too.
#pragma once
#include <cstdint>
#include <optional>

#include "eval/token_stream.h"
#include "model/causal_lm.h"

namespace qad::eval {

struct LmEvalOptions {
  int64_t seq_len = 512;    // targets per window (inputs = seq_len tokens of context at most)
  int64_t batch_size = 8;   // windows per forward
  int64_t chunk_rows = 2048;  // rows of FP32 log-softmax at a time (memory bound: rows * vocab * 4 bytes)
  bool progress = true;     // progress line on stderr
};

struct LmMetrics {
  int64_t windows = 0;
  int64_t stream_tokens = 0;
  int64_t scored_tokens = 0;  // targets with mask 1: the denominator of every mean below
  double nll = 0;             // mean negative log-likelihood (nats per token)
  double perplexity = 0;      // exp(nll)
  // With a teacher (same vocabulary):
  std::optional<double> teacher_nll, teacher_perplexity;
  std::optional<double> kl;               // mean KL(teacher || model), nats per token
  std::optional<double> top1_agreement;  // fraction of tokens where both argmaxes agree (first index on ties)
  double seconds = 0;
};

// Runs model (and teacher) over make_windows(stream, seq_len) in batches; no gradients.
LmMetrics evaluate_lm(model::CausalLM& model, model::CausalLM* teacher, const TokenStream& stream,
                      const LmEvalOptions& options);

}  // namespace qad::eval
