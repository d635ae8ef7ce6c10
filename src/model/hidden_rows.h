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

// The rows a decoder layer taps from its last residual add (CausalLM gives each layer one).
struct RowTap {
  torch::Tensor index;        // int64 [n] on the hidden states' device, distinct rows of the [B*T, H] view
  torch::Tensor slot_of_row;  // int32 [B*T] (fused::slots_of_rows(index)); undefined: no fused kernel
  torch::Tensor into;         // as tap_hidden_rows' `into`, or undefined
};

// A decoder layer's output with its rows (add_and_tap_rows).
struct TappedSum {
  torch::Tensor sum;       // a + b
  torch::Tensor rows;      // its rows at tap.index
  torch::Tensor residual;  // sum again (the same memory), for the next layer's residual add; undefined without
                           // autograd. The backward then receives the next layer's two gradients apart.
};

// tap_hidden_rows(a + b, tap.index, tap.into), with the add and the gather in one kernel (fused/add_gather_rows.h)
// where the kernel takes a and tap.slot_of_row is given: the rows are stored while they are in registers instead
// of read back by a gather of their own. The backward gives a and b the sum's gradient with the rows' gradient
// added, as tap_hidden_rows' does; when the next layer reads `sum` in its norm and `residual` in its residual
// add, the two gradients and the rows' are summed in one pass (add_scatter_rows) instead of autograd's sum and
// an add of the rows. a and b: one shape and dtype (else a + b is tapped as it is and residual is undefined).
TappedSum add_and_tap_rows(const torch::Tensor& a, const torch::Tensor& b, const RowTap& tap);

// How many backward calls (process-wide, since start) added the rows in place / into a copy: tests and
// benchmarks read these to see which path ran.
struct TapRowsCounts {
  int64_t in_place = 0, copied = 0;
};
TapRowsCounts tap_rows_backward_counts();

}  // namespace qad::model
