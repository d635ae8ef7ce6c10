// The per-token softmax work of the distillation loss, one row of logits at a time: log-softmax of the
// student's and the teacher's logits (divided by the temperature), the row's KL(teacher || student) and
// cross-entropy, and the gradient with respect to the student's logits, written in the logits' dtype for the
// lm_head GEMMs. The CUDA kernel reads each row twice (online max / sum, then values and gradient) and never
// materialises FP32 logits; the plain loop version is its reference (and the CPU path of the tests that check
// the wiring). Both compute, per row r and vocabulary entry v:
//   lps = max(s/T - lse(s/T), lowest), lpt likewise (lowest = the dtype's most negative finite float)
//   kl[r]   = sum_v exp(lpt) * (lpt - lps)
//   ce[r]   = -lps[label[r]]                                   (T must be 1 when labels are given)
//   grad[r] = a_kl[r] * (exp(lps) - exp(lpt)) + a_ce[r] * (exp(lps) - onehot(label[r]))
// which is what fused_head_losses.cc computes with tensor ops (docs/losses.md).
#pragma once
#include <torch/torch.h>

namespace qad::loss::kernels {

struct SoftmaxRows {
  torch::Tensor student;      // [rows, V] float32 / bfloat16 / float16, contiguous
  torch::Tensor teacher;      // same shape and dtype, or undefined (no KL)
  torch::Tensor labels;       // int64 [rows] in [0, V), or undefined (no CE)
  torch::Tensor kl_coef;      // float32 [rows]: a_kl (needed with a teacher when grad is defined)
  torch::Tensor ce_coef;      // float32 [rows]: a_ce, or undefined (CE not in the gradient)
  double temperature = 1.0;
  // Outputs (allocated by the caller; every element is written): float32 [rows] each where requested.
  torch::Tensor kl;           // with a teacher
  torch::Tensor ce;           // with labels
  torch::Tensor grad;         // [rows, V] in the logits' dtype, or undefined (no gradient)
};

void softmax_rows_reference(SoftmaxRows& a);
#ifdef QAD_HAS_CUDA
void softmax_rows_cuda(SoftmaxRows& a);
#endif

// Checks shapes and dtypes, then runs the CUDA kernel for CUDA tensors and the reference otherwise.
void softmax_rows(SoftmaxRows& a);

}  // namespace qad::loss::kernels
