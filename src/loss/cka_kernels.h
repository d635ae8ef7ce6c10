// The two memory-bound passes of the batched CKA term (cka.cc) as single kernels on CUDA, each beside a plain
// loop reference that tests compare it with:
// - centre_columns: the columns of every layer's token rows centred over the rows, read in the rows' own dtype
//   (BF16 in training) and written in FP32 for the TF32 products. The tensor-op version (a converting mean, then
//   a broadcast mixed-dtype subtraction) is three passes, the subtraction a non-vectorised kernel (0.63 ms of a
//   1.7B step for 28 layers x 1024 tokens); this is one read for the means and one read + write.
// - pair_sums: <a,b>, <a,a>, <b,b> of two [L, r, c] FP32 batches per layer in FP64, i.e. the three dot products
//   of the Gram form's kernels K and L; one read of each where the tensor ops make five passes and two temporaries.
#pragma once
#include <torch/torch.h>

namespace qad::loss::kernels {

// x [L, n, p] float32 / bfloat16 / float16, contiguous, n >= 1. Outputs (allocated by the caller, every element
// written): centred [L, n, p] float32 or bfloat16 (for BF16 products) and mean [L, 1, p] float32, where
//   mean[l, 0, j] = (sum_i float(x[l, i, j])) / n  rounded to float (the kernel's FP32 sum is in its own order),
//   centred[l, i, j] = float(x[l, i, j]) - mean[l, 0, j]  (one FP32 subtraction, as the tensor ops), rounded
//   once to centred's dtype.
struct CentreColumns {
  torch::Tensor x, centred, mean;
};
void centre_columns_reference(CentreColumns& a);  // sums in double
#ifdef QAD_HAS_CUDA
void centre_columns_cuda(CentreColumns& a);
#endif
// Checks shapes and dtypes, then runs the CUDA kernel for CUDA tensors and the reference otherwise.
void centre_columns(CentreColumns& a);

// a, b [L, r, c] float32, contiguous, the same shape. Output (allocated by the caller): out [L, 3] float64 with
// out[l] = (sum a*b, sum a*a, sum b*b) over layer l, each product rounded to float (as the FP32 tensor ops form
// it) and summed in double.
struct PairSums {
  torch::Tensor a, b, out;
};
void pair_sums_reference(PairSums& s);
#ifdef QAD_HAS_CUDA
void pair_sums_cuda(PairSums& s);
#endif
void pair_sums(PairSums& s);

}  // namespace qad::loss::kernels
