// Token-level losses on logits for distillation and QAT: forward KL(teacher || student) with temperature
// and an optional top-k restriction (renormalised, or with the rest of the vocabulary as one tail category),
// and cross-entropy on labels. Both run over tokens in chunks so that
// no FP32 copy of the whole [tokens, vocab] logits ever exists (docs/losses.md).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <utility>

namespace qad::loss {

struct KLOptions {
  double temperature = 1.0;     // T > 0; the loss is scaled by T^2 so that gradients keep their size
  int64_t top_k = 0;            // 0 = full vocabulary; k > 0 = teacher's top-k set, both renormalised
  bool top_k_tail = false;      // top-k: KL over S and one "tail" category (the rest of the vocabulary), with
                                // true probabilities instead of renormalising over S (needs the teacher's lse)
  int64_t chunk_tokens = 4096;  // tokens per FP32 chunk; transient memory ~3 * chunk * vocab * 4 bytes
};

// Forward KL(softmax(t/T) || softmax(s/T)) * T^2 per token, averaged over tokens where mask != 0.
// logits [..., V] in any float dtype (BF16 on GPU), teacher of the same shape; mask [...] (any dtype) or
// undefined = all tokens. Computed in FP32 (FP64 for FP64 inputs). The gradient w.r.t. student_logits,
// T * (softmax(s/T) - softmax(t/T)) / n_tokens, is computed in the forward chunk by chunk and stored in the
// logits' dtype; backward returns it times grad_output. The teacher gets no gradient.
// top_k > 0: S = the teacher's k largest logits per token (k is capped at V); KL between softmax(t_S/T) and
// softmax(s_S/T), both renormalised over S; the student's logits outside S get zero gradient. With top_k_tail,
// the KL over S and the tail (kl_divergence_top_k below), the teacher's lse from teacher_logsumexp.
// No valid token: returns 0 (and zero gradient).
torch::Tensor kl_divergence(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                            const torch::Tensor& mask, const KLOptions& options = {});

// The teacher's k largest logits per token and their vocabulary ids (int64), both [..., k], in descending
// order: the support S of the top-k KL. kl_divergence's top_k selects S with this very call, and a teacher cache
// (qad teacher-cache) stores its result, so that the KL from a cache equals the live top-k KL bit for bit.
std::pair<torch::Tensor, torch::Tensor> teacher_top_k(const torch::Tensor& teacher_logits, int64_t k);

// The teacher's log-normaliser logsumexp(t/T) over the full vocabulary per position, [...] in FP32 (FP64 for
// FP64 logits): the tail KL's teacher probabilities on S are exp(t_v/T - lse). A teacher cache stores this very
// call's result at T = 1 (row chunks of a fixed size, so that the same logits give the same bits live and cached).
torch::Tensor teacher_logsumexp(const torch::Tensor& teacher_logits, double temperature = 1.0);

// The top-k KL given the teacher's side as teacher_top_k returns it (live, or read from a teacher cache):
// KL(softmax(t_S/T) || softmax(s_S/T)) * T^2 on S = teacher_top_ids, both renormalised over S; the student's
// logits outside S get zero gradient. teacher_top_logits [..., k] any float dtype, teacher_top_ids [..., k]
// int64 in [0, V), leading dimensions those of student_logits. options.top_k is not used (k is the tensors').
// options.top_k_tail: the KL over the k + 1 categories S and tail = the rest of the vocabulary, with the
// teacher's true probabilities p_v = exp(t_v/T - lse), p_tail = max(0, 1 - sum_S p_v), and the student's
// full-vocabulary log_softmax(s/T), q_tail = sum_{v not in S} q_v (from a masked logsumexp, never 1 - sum_S q):
//   KL_tok = T^2 [sum_S p_v (log p_v - log q_v) + p_tail (log p_tail - log q_tail)]   (0 log 0 = 0),
// gradient T (q_u - p_u) / n on S and T q_u (1 - p_tail / q_tail) / n outside S (dense). teacher_lse [...] is
// teacher_logsumexp at options.temperature (a cache's is at T = 1); required with top_k_tail, unused otherwise.
torch::Tensor kl_divergence_top_k(const torch::Tensor& student_logits, const torch::Tensor& teacher_top_logits,
                                  const torch::Tensor& teacher_top_ids, const torch::Tensor& mask,
                                  const KLOptions& options = {}, const torch::Tensor& teacher_lse = {});

// Token-level cross-entropy -log softmax(s)[label], averaged over tokens where mask != 0 and
// label != ignore_index (labels already aligned with the logits: the caller shifts them). labels [...] int64.
// Chunked like kl_divergence; gradient (softmax(s) - onehot(label)) / n_tokens. Labels outside [0, V) throw.
// check_labels = false skips the range check (it reads the labels on the host, waiting for the device): only for
// callers that have checked them already (the training step does, before its work is queued).
torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& mask,
                            int64_t chunk_tokens = 4096, int64_t ignore_index = -100, bool check_labels = true);

}  // namespace qad::loss
