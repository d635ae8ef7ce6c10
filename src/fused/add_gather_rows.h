// The last residual add of a decoder layer, out = a + b, that also copies the CKA term's sampled rows of `out`
// into their slots of the layer's row buffer while they are in registers. A separate gather (index_select) reads
// those rows back from memory in a kernel of its own, one per layer and model (58 per step at the 1.7B shape,
// 0.21 ms); here the rows cost only their write.
// Its backward counterpart, add_scatter_rows: the gradient of that output is the sum of its two readers' gradients
// (the next layer's norm and residual) plus the rows' gradient at their rows; one pass instead of autograd's sum
// and a separate row add (28 per step, 0.13 ms).
#pragma once
#include <torch/torch.h>

namespace qad::fused {

// a, b, out: [.., H] contiguous, one floating dtype, N = numel / H rows; slot_of_row: int32 [N], -1 for a row that
// is not sampled, else its row of `rows` ([n, H], contiguous, the dtype of a; rows not named by a slot are left
// as they are). out = a + b computed in float and rounded once (ATen's add, bit for bit), rows[slot[r]] = out[r].
// The CUDA kernel; CPU tensors (and shapes the kernel does not take: add_gather_rows_cuda_supports) take the
// reference. Returns out.
torch::Tensor& add_gather_rows_out(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                                   const torch::Tensor& slot_of_row, torch::Tensor& rows);

// Whether the CUDA kernels take a (a CUDA tensor of float32, bfloat16 or float16 whose rows are whole 16-byte
// vectors, starting at a 16-byte boundary). Callers ask it of every operand; the kernels refuse others.
bool add_gather_rows_cuda_supports(const torch::Tensor& a);

// out = a + b (rounded once), then out[r] += rows[slot[r]] (rounded once more) where slot[r] >= 0: bit for bit
// what adding a and b and then add_rows_ (row_add.h) give. out may be a (in place). Shapes and dtypes as for
// add_gather_rows_out; rows is read.
torch::Tensor& add_scatter_rows_out(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                                    const torch::Tensor& slot_of_row, const torch::Tensor& rows);

// The plain loop references (any device; compute on the host and copy back).
void add_scatter_rows_reference(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                                const torch::Tensor& slot_of_row, const torch::Tensor& rows);
void add_gather_rows_reference(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                               const torch::Tensor& slot_of_row, torch::Tensor& rows);

// slot_of_row for `index` (distinct int64 row numbers in [0, rows)): int32 [rows] on index's device.
torch::Tensor slots_of_rows(const torch::Tensor& index, int64_t rows);

}  // namespace qad::fused
