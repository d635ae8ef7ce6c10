// Grouping (token, slot) pairs by expert with one stable sort, and summing expert outputs back per token.
#include "model/moe_dispatch.h"

#include "util/error.h"

namespace qad::model {

ExpertDispatch dispatch_by_expert(const torch::Tensor& experts, int64_t num_experts, const torch::Tensor& keep) {
  QAD_CHECK(experts.dim() == 2 && experts.scalar_type() == torch::kLong,
            "dispatch_by_expert: experts must be int64 [tokens, k]");
  ExpertDispatch d;
  d.num_tokens = experts.size(0);
  d.top_k = experts.size(1);
  auto flat = experts.reshape({-1});
  auto slots = torch::arange(flat.numel(), flat.options());
  if (keep.defined()) {
    QAD_CHECK(keep.numel() == d.num_tokens, "dispatch_by_expert: keep has {} entries for {} tokens", keep.numel(),
              d.num_tokens);
    auto keep_slots = keep.reshape({-1, 1}).to(flat.device(), torch::kBool).expand({d.num_tokens, d.top_k}).reshape({-1});
    slots = slots.masked_select(keep_slots);
    flat = flat.masked_select(keep_slots);
  }
  // Stable: within an expert, rows stay in token order (transformers' torch.where order).
  auto order = std::get<1>(torch::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  d.slot_of_row = slots.index_select(0, order);
  d.token_of_row = torch::div(d.slot_of_row, d.top_k, "floor");
  auto counts = torch::bincount(flat, /*weights=*/{}, num_experts).cpu();
  d.counts.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + num_experts);
  return d;
}

torch::Tensor combine_by_token(const torch::Tensor& rows, const ExpertDispatch& d) {
  QAD_CHECK(rows.dim() == 2 && rows.size(0) == d.slot_of_row.numel(),
            "combine_by_token: {} rows for {} dispatched slots", rows.size(0), d.slot_of_row.numel());
  auto slots = torch::zeros({d.num_tokens * d.top_k, rows.size(1)}, rows.options())
                   .index_copy(0, d.slot_of_row, rows)
                   .view({d.num_tokens, d.top_k, rows.size(1)});
  // Sequential adds in the model dtype, like index_add_ into a zero buffer one expert at a time.
  auto out = slots.select(1, 0);
  for (int64_t j = 1; j < d.top_k; ++j) out = out + slots.select(1, j);
  return out;
}

}  // namespace qad::model
