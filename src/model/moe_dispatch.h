// Token dispatch and combine for mixture-of-experts layers: the (token, slot) pairs a router selected are
// grouped by expert so that each expert runs one GEMM over all its tokens (never a loop over tokens), and
// the expert outputs are summed back per token in ascending expert order (transformers' accumulation order,
// so that BF16 rounding matches too). Architecture-neutral: any top-k router and any expert module.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace qad::model {

struct ExpertDispatch {
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  torch::Tensor token_of_row;   // int64 [M]: the token each dispatched row reads, rows grouped by expert
  torch::Tensor slot_of_row;    // int64 [M]: token * k + slot, where each row's output goes back
  std::vector<int64_t> counts;  // rows per expert, on the host (the one device sync of a MoE layer)
};

// Groups the selected (token, slot) pairs of `experts` (int64 [N, k]) by expert; rows of tokens where `keep`
// (bool [N]) is false are left out (padding: their MoE output is zero and they never reach an expert, so
// they cannot move a calibrated scale). Within one expert the rows keep token order.
ExpertDispatch dispatch_by_expert(const torch::Tensor& experts, int64_t num_experts, const torch::Tensor& keep = {});

// Sums the dispatched rows' outputs ([M, H], already weighted, in dispatch order) back to [N, H]: each token's
// slots in slot order, starting from its first slot (slots must be in ascending expert order for
// transformers' order; MoeBlock sorts them). Tokens with no row get zeros.
torch::Tensor combine_by_token(const torch::Tensor& rows, const ExpertDispatch& d);

// Each expert over its dispatched rows of `flat` ([N, H]: the layer's tokens), one call per expert with rows; the
// outputs [M, H] in dispatch order (an empty [0, H] of `empty_options` when no row was dispatched).
template <typename Expert>
torch::Tensor run_experts(std::vector<Expert>& experts, const torch::Tensor& flat, const ExpertDispatch& d,
                          const torch::TensorOptions& empty_options) {
  auto rows = flat.index_select(0, d.token_of_row);
  std::vector<torch::Tensor> outs;
  int64_t offset = 0;
  for (size_t e = 0; e < experts.size(); ++e) {
    const int64_t n = d.counts[e];
    if (n == 0) continue;
    outs.push_back(experts[e](rows.narrow(0, offset, n)));
    offset += n;
  }
  return outs.empty() ? torch::zeros({0, flat.size(-1)}, empty_options) : torch::cat(outs, 0);
}

// ModelOpt's MoE calibration: every expert sees every token of `flat` where `keep` (bool [N], or undefined: all)
// holds, once, so that no expert is left without an input scale; the outputs are thrown away (the routed forward
// is the layer's result).
template <typename Expert>
void calibrate_every_expert(std::vector<Expert>& experts, const torch::Tensor& flat, const torch::Tensor& keep) {
  torch::NoGradGuard no_grad;
  auto tokens = keep.defined() ? flat.index_select(0, keep.nonzero().reshape({-1})) : flat;
  for (auto& e : experts) e(tokens);
}

}  // namespace qad::model
