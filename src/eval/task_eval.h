// Task evaluation: generative tasks (continuous-batching generation, greedy or k samples per item, stop at
// the chat end token, answer extracted by an AnswerRule and judged by an AnswerCheck; avg@k / pass@k /
// maj@k) and multiple choice by log-likelihood. Protocols: docs/eval.md "Tasks".
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "eval/answer_check.h"
#include "eval/answer_extraction.h"
#include "eval/sample_metrics.h"
#include "eval/task_file.h"
#include "model/batched_generate.h"
#include "model/causal_lm.h"

namespace qad::tokenizer {
class Tokenizer;
}

namespace qad::eval {

// How multiple-choice log-likelihoods are compared: the plain sum over the choice's tokens, the mean per
// token, or the sum per UTF-8 byte of the choice text (lm-eval-harness's acc_norm uses characters).
enum class McNorm { kSum, kPerToken, kPerByte };
McNorm parse_mc_norm(const std::string& name);  // "sum", "token", "byte"

struct TaskEvalOptions {
  AnswerRule rule = AnswerRule::kAfterThink;
  int64_t max_new_tokens = 200;
  CheckOptions check;             // exact match by default (tasks/arith's rule)
  int64_t batch_size = 0;         // generation slots (0 = planned from free memory) / MC sequences per forward (0 = 32)
  int64_t samples = 1;            // generations per item (k); avg@k, pass@k, maj@k when > 1
  std::vector<int64_t> pass_k;    // the k of pass@k and maj@k (each <= samples); empty: 1 and samples
  model::SamplingOptions sampling;  // greedy by default
  std::vector<int64_t> stop_ids;  // empty: default_stop_ids()
  McNorm mc_norm = McNorm::kSum;
  bool progress = true;
};

// One generation of a generative item.
struct SampleResult {
  std::string generation, prediction;
  bool correct = false;
  int64_t new_tokens = 0;
  bool stopped = false;  // false: cut off at max_new_tokens
};

struct ItemResult {
  const TaskItem* item = nullptr;
  bool correct = false;  // generative: the first sample's (the greedy one's) correctness
  // Generative: the generation (decoded with special tokens kept, cut before the first stop token), the
  // extracted answer, the number of generated tokens (stop token included) and whether a stop token ended it.
  std::string generation, prediction;
  int64_t new_tokens = 0;
  bool stopped = false;
  std::vector<SampleResult> samples;  // generative: every sample (the fields above repeat the first)
  // Multiple choice: per choice sum of log-probabilities and its token count; the chosen index.
  std::vector<double> choice_logprobs;
  std::vector<int64_t> choice_tokens;
  int64_t chosen = -1;
};

struct Tally {
  int64_t n = 0, correct = 0;
  double accuracy() const { return n > 0 ? static_cast<double>(correct) / static_cast<double>(n) : 0.0; }
};

struct TaskResults {
  std::vector<ItemResult> items;  // in task-file order
  Tally generative, multiple_choice, all;
  std::map<std::string, Tally> by_group;  // items with a group value
  std::vector<int64_t> stop_ids;
  int64_t generated_tokens = 0;
  int64_t cut_off = 0;  // generations that reached max_new_tokens without a stop token
  double seconds = 0;
  // Generative items with samples >= 1: avg@k over all samples, pass@k and maj@k for each k of pass_k.
  Estimate avg_at_k;
  std::map<int64_t, Estimate> pass_at_k, maj_at_k;
  model::GenerateStats generation;
};

// Stop tokens when none are given: the chat template's end-of-turn token (<|im_end|> for ChatML,
// <|eot_id|> for Llama 3) when the tokenizer has a chat family, else the model's EOS ids and the
// tokenizer's EOS.
std::vector<int64_t> default_stop_ids(const model::CausalLM& lm, const tokenizer::Tokenizer& tok);

// The token ids of an item's context: a rendered "prompt" is encoded with the tokenizer's template
// (add_special_tokens=true; a doubled leading BOS, from a prompt that spells it out, is dropped); chat
// messages are rendered by the chat template with the generation prompt.
std::vector<int64_t> encode_context(const TaskItem& item, const tokenizer::Tokenizer& tok);

// Sum of log p(continuation tokens | context) for each (context, continuation) pair, FP64 sums of FP32
// log-softmax; pairs are batched (right-padded) batch_size at a time. Continuations must be non-empty.
std::vector<double> score_continuations(model::CausalLM& lm,
                                        const std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>>& pairs,
                                        int64_t batch_size);

// The index of the best score (first on ties).
int64_t argmax_first(const std::vector<double>& scores);

TaskResults evaluate_tasks(model::CausalLM& lm, const tokenizer::Tokenizer& tok, const TaskFile& tasks,
                           const TaskEvalOptions& options);

}  // namespace qad::eval
