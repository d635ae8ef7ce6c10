// torch::stack of the CKA term's per-layer rows without the copy. A forward with ForwardOptions::hidden_rows
// gathers every layer's rows into consecutive slices of one [entries, n, H] buffer (model/hidden_rows.h), so
// stacking them is a view of that buffer; the backward hands each slice its part of the gradient, as stack's does.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace qad::loss {

// torch::stack(rows) (dim 0). When rows are contiguous [n, H] tensors of one storage at offsets a uniform step of
// at least n * H apart, in order (consecutive slices, or slices with scratch rows between them), the result is a
// view of that storage instead of a copy (layer stride = the step; differentiable: rows[i] receives the result's
// gradient at i); otherwise torch::stack itself.
torch::Tensor stack_rows(const std::vector<torch::Tensor>& rows);

// Whether stack_rows(rows) makes no copy.
bool rows_are_consecutive_slices(const std::vector<torch::Tensor>& rows);

// How many stack_rows calls (process-wide, since start) returned a view / fell back to torch::stack: benchmarks
// print them to show which path the step took.
struct StackRowsCounts {
  int64_t views = 0, copies = 0;
};
StackRowsCounts stack_rows_counts();

}  // namespace qad::loss
