// The distillation loss from the final hidden states: lm_head and KL(teacher || student) (and cross-entropy)
// computed over chunks of tokens, so that neither model's full [tokens, vocab] logits ever exist. Each chunk's
// student and teacher logits are two GEMMs; the FP32 softmax work gives the chunk's loss and its gradient with
// respect to the logits, which two more GEMMs turn into the gradients of the student's hidden state and lm_head
// weight right away. The backward only scales those by the incoming gradient. Same values as kl_divergence /
// cross_entropy on the full logits (docs/losses.md), up to summation order.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace qad::loss {

// Who does the per-token softmax work: the fused per-row kernel (loss/softmax_rows.h) on CUDA and tensor ops
// elsewhere (kAuto); the per-row code everywhere, its plain reference on CPU, so that CPU tests cover the wiring
// (kAlways); tensor ops everywhere (kOff). The per-row code needs temperature 1 when CE is computed, and
// non-FP64 operands: otherwise tensor ops run.
enum class SoftmaxRowsUse { kAuto, kAlways, kOff };

struct HeadLossOptions {
  double kl_weight = 1.0;       // weight of KL(teacher || student) in the returned loss (0: teacher unused)
  double ce_weight = 0.0;       // weight of the cross-entropy on `labels`
  bool ce_value = false;        // compute CE's value even when ce_weight is 0 (logging)
  double temperature = 1.0;     // KL temperature, loss scaled by T^2 (as kl_divergence)
  int64_t chunk_tokens = 2048;  // tokens per chunk; transient memory ~4 * chunk * vocab * 4 bytes
  int64_t ignore_index = -100;  // labels with this value do not count for CE
  SoftmaxRowsUse softmax_rows = SoftmaxRowsUse::kAuto;
};

struct HeadLosses {
  torch::Tensor loss;  // kl_weight * KL + ce_weight * CE: 0-dim, differentiable in the student's hidden and weight
  torch::Tensor kl;    // detached KL value (0-dim), undefined when kl_weight is 0
  torch::Tensor ce;    // detached CE value, undefined unless ce_weight > 0 or ce_value
};

// student_hidden / teacher_hidden [..., H] (the states after each model's final norm, same leading dims),
// student_head / teacher_head [V, H] (lm_head weights, no bias); labels [...] int64 (needed for CE; not checked
// here: the caller checks the range); mask [...] (nonzero = token counts) or undefined = all. The loss averages over
// the counted tokens (CE: those whose label is not ignore_index); no token: 0. Every token is computed, the mask
// weighs them, so nothing here waits for the device. Accumulation in FP32 (FP64 for FP64 inputs).
HeadLosses fused_head_losses(const torch::Tensor& student_hidden, const torch::Tensor& student_head,
                             const torch::Tensor& teacher_hidden, const torch::Tensor& teacher_head,
                             const torch::Tensor& labels, const torch::Tensor& mask, const HeadLossOptions& options);

}  // namespace qad::loss
