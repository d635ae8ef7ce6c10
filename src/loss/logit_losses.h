// Token-level losses on logits for distillation and QAT: forward KL(teacher || student) with temperature
// and an optional top-k restriction, and cross-entropy on labels. Both run over tokens in chunks so that
// no FP32 copy of the whole [tokens, vocab] logits ever exists (docs/losses.md).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <utility>

namespace qad::loss {

struct KLOptions {
  double temperature = 1.0;     // T > 0; the loss is scaled by T^2 so that gradients keep their size
  int64_t top_k = 0;            // 0 = full vocabulary; k > 0 = teacher's top-k set, both renormalised
  int64_t chunk_tokens = 4096;  // tokens per FP32 chunk; transient memory ~3 * chunk * vocab * 4 bytes
};

// Forward KL(softmax(t/T) || softmax(s/T)) * T^2 per token, averaged over tokens where mask != 0.
// logits [..., V] in any float dtype (BF16 on GPU), teacher of the same shape; mask [...] (any dtype) or
// undefined = all tokens. Computed in FP32 (FP64 for FP64 inputs). The gradient w.r.t. student_logits,
// T * (softmax(s/T) - softmax(t/T)) / n_tokens, is computed in the forward chunk by chunk and stored in the
// logits' dtype; backward returns it times grad_output. The teacher gets no gradient.
// top_k > 0: S = the teacher's k largest logits per token (k is capped at V); KL between softmax(t_S/T) and
// softmax(s_S/T), both renormalised over S; the student's logits outside S get zero gradient.
// No valid token: returns 0 (and zero gradient).
torch::Tensor kl_divergence(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                            const torch::Tensor& mask, const KLOptions& options = {});

// The teacher's k largest logits per token and their vocabulary ids (int64), both [..., k], in descending
// order: the support S of the top-k KL. kl_divergence's top_k selects S with this very call, and a teacher cache
// (qad teacher-cache) stores its result, so that the KL from a cache equals the live top-k KL bit for bit.
std::pair<torch::Tensor, torch::Tensor> teacher_top_k(const torch::Tensor& teacher_logits, int64_t k);

// The top-k KL given the teacher's side as teacher_top_k returns it (live, or read from a teacher cache):
// KL(softmax(t_S/T) || softmax(s_S/T)) * T^2 on S = teacher_top_ids, both renormalised over S; the student's
// logits outside S get zero gradient. teacher_top_logits [..., k] any float dtype, teacher_top_ids [..., k]
// int64 in [0, V), leading dimensions those of student_logits. options.top_k is not used (k is the tensors').
torch::Tensor kl_divergence_top_k(const torch::Tensor& student_logits, const torch::Tensor& teacher_top_logits,
                                  const torch::Tensor& teacher_top_ids, const torch::Tensor& mask,
                                  const KLOptions& options = {});

// Token-level cross-entropy -log softmax(s)[label], averaged over tokens where mask != 0 and
// label != ignore_index (labels already aligned with the logits: the caller shifts them). labels [...] int64.
// Chunked like kl_divergence; gradient (softmax(s) - onehot(label)) / n_tokens. Labels outside [0, V) throw.
// check_labels = false skips the range check (it reads the labels on the host, waiting for the device): only for
// callers that have checked them already (the training step does, before its work is queued).
torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& mask,
                            int64_t chunk_tokens = 4096, int64_t ignore_index = -100, bool check_labels = true);

}  // namespace qad::loss
