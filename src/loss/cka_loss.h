// The CKA-QAD regulariser: lambda * mean over chosen layers of (1 - CKA(teacher_l, student_l)) on the hidden
// states of the batch's valid tokens, with optional token subsampling and dynamic balancing against the KL.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "loss/cka.h"

namespace qad::loss {

using NamedHidden = std::vector<std::pair<std::string, torch::Tensor>>;

struct CkaLossOptions {
  double weight = 1.0;                          // lambda
  CkaEstimator estimator = CkaEstimator::kBiased;
  int64_t subsample_tokens = 0;                 // 0 = all valid tokens; else this many, drawn afresh each call
  bool dynamic_balance = false;                 // scale the term to the KL's magnitude (needs kl_value)
  std::vector<std::string> layers;              // empty = every layer given (in the student's order)
  double balance_max_factor = 1e3;              // cap on the dynamic-balance factor (1 - CKA can approach 0)
  bool read_values = true;                      // false: leave per_layer_cka empty (no host synchronisation);
                                                // the values stay on the device in CkaLossResult::per_layer
  bool bf16_products = false;                   // BF16 products with FP32 accumulation on CUDA (cka.h)
  int64_t scratch_rows = 0;                     // rows of scratch after each layer's rows (linear_cka_batched):
                                                // model::ForwardOutput::hidden_scratch_rows of the forwards
};

struct CkaLossResult {
  torch::Tensor loss;                                        // 0-dim, differentiable in the student's hidden states
  std::vector<std::pair<std::string, double>> per_layer_cka;  // detached values, in layer order (if read_values)
  torch::Tensor per_layer;                                   // the same, [layers] FP64 on the device
  torch::Tensor term;                                        // mean over layers of (1 - CKA), FP64 0-dim, unweighted
  std::vector<std::string> layers;                           // their names
  double balance_factor = 1.0;                               // the factor applied (1 without dynamic balancing)
};

// Which tokens the CKA term sees this step: the rows of the flattened [B*T] batch with mask != 0 (mask [B, T] or
// undefined = all), then `subsample_tokens` of them drawn from gen (sorted). index is int64 on `device`, or
// undefined when every row counts. The trainer passes index to the model forward (ForwardOptions::hidden_rows)
// so that only these rows of each layer are kept. Throws when fewer than the estimator's minimum remain.
// slots: where the sample was drawn on the host (no mask), its row -> slot map for the fused row taps, int32
// [batch * tokens] on `device`, -1 for a row not drawn (fused/add_gather_rows.h), copied in one transfer with the
// index; undefined otherwise (the forward builds it from the index).
struct CkaTokens {
  torch::Tensor index;
  int64_t count = 0;
  torch::Tensor slots;
};
CkaTokens select_cka_tokens(const torch::Tensor& mask, int64_t batch, int64_t tokens, const CkaLossOptions& options,
                            torch::Generator* gen, torch::Device device);

// The loss on hidden states already reduced to the chosen tokens: named [n, H] (or [B, T, H] = every token).
CkaLossResult cka_loss_on_tokens(const NamedHidden& teacher_rows, const NamedHidden& student_rows,
                                 const CkaLossOptions& options, std::optional<double> kl_value = {});

// teacher_hidden / student_hidden: named [B, T, H] tensors (the teacher's are detached here in any case; H may
// differ between the two); matched by name. mask [B, T] (nonzero = token counts) or undefined. gen draws the
// subsample (CPU generator; the default generator when null). kl_value: this step's KL, for dynamic balancing:
//   loss = weight * f * mean_l(1 - CKA_l),  f = min(kl_value / mean_l(1 - CKA_l), balance_max_factor), detached,
// so that with weight 1 the CKA term equals the KL in value; f = balance_max_factor when the term is <= 0.
// One host synchronisation per call (the per-layer values).
CkaLossResult cka_loss(const NamedHidden& teacher_hidden, const NamedHidden& student_hidden, const torch::Tensor& mask,
                       const CkaLossOptions& options, torch::Generator* gen = nullptr,
                       std::optional<double> kl_value = {});

}  // namespace qad::loss
