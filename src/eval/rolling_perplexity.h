// Perplexity as lm-evaluation-harness scores its rolling log-likelihood tasks (wikitext and friends): each
// document on its own, in rolling windows within the document, never with context from another document.
// The document's tokens are all targets; the first is predicted from a prefix token (the document's own
// leading BOS when the tokenizer template put one there, else `prefix_id`: lm-eval's prefix_token_id,
// the tokenizer's BOS or else its EOS), which is context only. The document-end token of the packed
// stream is not scored. Reports token, word and byte perplexity and bits per byte. docs/eval.md.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "eval/token_stream.h"
#include "model/causal_lm.h"

namespace qad::eval {

struct RollingOptions {
  int64_t seq_len = 512;  // lm-eval's max_length: predictions per window, and the window's input length
  int64_t batch_size = 8;
  int32_t prefix_id = -1;  // for documents without a leading BOS; required then
  std::optional<int32_t> bos_id;  // a document starting with it uses it as its prefix
  bool progress = true;
};

struct RollingMetrics {
  int64_t documents = 0, windows = 0;
  int64_t tokens = 0, words = 0, bytes = 0;  // targets; the documents' words and UTF-8 bytes
  double nll_sum = 0;                        // nats, all documents
  double nll = 0, perplexity = 0;            // per token
  double word_perplexity = 0, byte_perplexity = 0, bits_per_byte = 0;
  double seconds = 0;
};

// One rolling window: `input` tokens, the last `targets` of which predict the tokens after them.
struct RollingWindow {
  int64_t document = 0;
  std::vector<int32_t> tokens;  // input tokens followed by the last target (inputs = all but the last)
  int64_t targets = 0;          // the last `targets` positions of the inputs are scored
};

// lm-eval's get_rolling_token_windows + make_disjoint_window with context_len 1: over [prefix] + doc,
// target blocks of seq_len tokens, each predicted from the seq_len tokens before its last target.
std::vector<RollingWindow> rolling_windows(const std::vector<int32_t>& doc, int32_t prefix, int64_t seq_len,
                                           int64_t document = 0);

RollingMetrics evaluate_rolling(model::CausalLM& model, const TokenStream& stream, const RollingOptions& options);

}  // namespace qad::eval
