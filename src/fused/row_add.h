// dst[index[i]] += src[i] for distinct row indices: how the CKA term's row gradients go into the residual stream's
// gradient (model/hidden_rows.cc). ATen's index_add_ on CUDA is a general scatter with atomic adds in the element
// type (21 us per decoder layer for 1024 BF16 rows of 2048 at the 1.7B shape); with distinct rows no two
// threads touch one element, so a plain vectorised read-add-write does it in a few microseconds.
#pragma once
#include <torch/torch.h>

namespace qad::fused {

// dst [N, H] (contiguous), index int64 [n] with distinct values in [0, N), src [n, H] in dst's dtype:
// dst[index[i], j] = round_to_dtype(float(dst[index[i], j]) + float(src[i, j])), as index_add_ gives for
// distinct indices (one addition per element). Other rows are untouched. Returns dst.
torch::Tensor& add_rows_(torch::Tensor& dst, const torch::Tensor& index, const torch::Tensor& src);

// The plain loop reference (any device; computes on the host and copies back).
void add_rows_reference(torch::Tensor& dst, const torch::Tensor& index, const torch::Tensor& src);

}  // namespace qad::fused
