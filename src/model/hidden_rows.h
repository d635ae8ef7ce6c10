// Selected rows of a hidden state for the CKA term, with a backward that adds their gradient straight into the
// gradient of the hidden state. index_select's own backward builds a zero tensor of the full [B*T, H] size per
// layer and autograd then adds it to the residual stream's gradient: two full passes over every layer's
// gradient for a few hundred rows.
#pragma once
#include <torch/torch.h>

#include <utility>

namespace qad::model {

// {h', rows}: h' is h (the same values, as a view of it, to be used instead of h from here on) and rows =
// h.reshape({-1, H}).index_select(0, index). In backward, h's gradient is h''s gradient with rows' gradient
// added at `index` (index_add; indices must be distinct, as sampled token rows are). Without autograd (no grad
// mode, or h needs no gradient) it is index_select and h itself. When the backward holds the only reference to
// h''s gradient (the usual case in a decoder) the rows are added into it in place, touching only those rows;
// otherwise out of place (one pass over the gradient).
// `into` (optional): a contiguous [n, H] tensor of h's dtype and device the rows are gathered into; rows is then
// an alias of it. CausalLM gathers every layer's rows into consecutive slices of one buffer, which
// loss::stack_rows then stacks without a copy.
std::pair<torch::Tensor, torch::Tensor> tap_hidden_rows(const torch::Tensor& h, const torch::Tensor& index,
                                                        const torch::Tensor& into = {});

// How many backward calls (process-wide, since start) added the rows in place / into a copy: tests and
// benchmarks read these to see which path ran.
struct TapRowsCounts {
  int64_t in_place = 0, copied = 0;
};
TapRowsCounts tap_rows_backward_counts();

}  // namespace qad::model
