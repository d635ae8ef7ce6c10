// Linear CKA between two sets of token features X [n, p1] and Y [n, p2] (rows = the same tokens):
// the feature form used for training and diagnostics, and the Gram form as the reference. Estimators
// and their scaling are in docs/losses.md.
#pragma once
#include <torch/torch.h>

namespace qad::loss {

// kBiased: HSIC_b = tr(K H L H) / (n-1)^2. kDebiased: the unbiased HSIC of Song et al. (2012), as used by
// Nguyen, Raghu & Kornblith (2021); needs n >= 4 and can make CKA negative.
enum class CkaEstimator { kBiased, kDebiased };

// Feature form: columns centred over the n rows, three p x p products Y^T X, X^T X, Y^T Y accumulated in FP32
// (FP64 for FP64 inputs; BF16/FP16 are upcast), scalar reductions in FP64. Differentiable in x and y through a
// custom backward (two matmuls per input that needs a gradient; no n x n matrix). Returns a 0-dim tensor in
// the compute dtype. Rows that must not count are removed by the caller. Zero-variance inputs give NaN.
torch::Tensor linear_cka(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator estimator = CkaEstimator::kBiased);

// Many pairs at once (e.g. every decoder layer): x [L, n, p1], y [L, n, p2] -> [L], the same values as L calls of
// linear_cka, in one set of batched products (a handful of kernels instead of L times as many). When n is
// smaller than the features it works on the n x n Gram matrices instead of the p x p products (cheaper then;
// same result up to rounding).
// bf16_products (CUDA, BF16 x and y, the Gram form of the biased estimator; ignored elsewhere): K = X X^T and L = Y Y^T are
// BF16 tensor-core products of the rows as they are (the hidden states' own BF16 values), accumulated and stored
// in FP32 (twice the TF32 rate), and the centring happens on the n x n kernels (H K H) instead of the features:
// no centred copy of the rows is written. The backward's combination of the two kernels is rounded to BF16 for
// its product with the rows. Error budget and tests: docs/losses.md, "BF16 products".
// scratch_rows: the caller's promise that this many rows after each layer's n rows of x and of y (rows of contiguous
// features at a layer stride of at least (n + scratch_rows) * p, e.g. model::ForwardOutput's gathered rows) belong
// to nothing else. With 8 or more the BF16 path's backward writes the differentiated side's column means there and
// folds the centring into its product (cka.cc) instead of writing a centred copy of the rows.
torch::Tensor linear_cka_batched(const torch::Tensor& x, const torch::Tensor& y,
                                 CkaEstimator estimator = CkaEstimator::kBiased, bool bf16_products = false,
                                 int64_t scratch_rows = 0);

// The CKA-QAD term over the layers, weight * mean_l(1 - CKA_l), as one operation: the values of
// linear_cka_batched (the same products, kernels and options), then kernels::CkaTerm's single launch where tensor
// ops take six in the forward and three in the backward (the term's gradient rides in the backward's per-layer
// factors). loss: 0-dim in the values' dtype (FP32; FP64 for FP64 inputs), differentiable as linear_cka_batched;
// term: mean_l(1 - CKA_l) and per_layer: CKA_l, FP64 on the inputs' device, not differentiable. The values are the
// FP64 CKA the FP32 values of linear_cka_batched round, and loss rounds weight * term once.
struct CkaTermResult {
  torch::Tensor loss, term, per_layer;
};
CkaTermResult cka_term_batched(const torch::Tensor& x, const torch::Tensor& y, double weight,
                               CkaEstimator estimator = CkaEstimator::kBiased, bool bf16_products = false,
                               int64_t scratch_rows = 0);

namespace detail {
// cka_term_batched on the BF16 path on any device (as linear_cka_batched_bf16).
CkaTermResult cka_term_batched_bf16(const torch::Tensor& x, const torch::Tensor& y, double weight,
                                    int64_t scratch_rows = 0);
// linear_cka_batched's BF16 path (biased estimator, BF16 x and y, the Gram form) on any device, also where
// bf16_products would ignore it: the CPU tests check its algebra (the Gram centring, the backward) against FP64.
torch::Tensor linear_cka_batched_bf16(const torch::Tensor& x, const torch::Tensor& y, int64_t scratch_rows = 0);
}  // namespace detail

// Gram form on K = X X^T, L = Y Y^T (n x n memory): the reference for tests; differentiable by autograd.
// Computed in FP64 for FP64 inputs, FP32 otherwise.
torch::Tensor linear_cka_gram(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator estimator);

// The HSIC estimates behind one CKA value, as FP64 host numbers: hsic(X,Y), hsic(X,X), hsic(Y,Y) with the
// estimator's scaling (biased: / (n-1)^2; debiased: the unbiased HSIC), so that values from batches of different
// sizes can be averaged (minibatch CKA). CKA = xy / sqrt(xx * yy).
struct HsicTerms {
  double xy = 0, xx = 0, yy = 0;
  double cka() const;
};
HsicTerms hsic_terms(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator estimator);  // feature form, no grad

// Gram-form HSIC of two n x n kernel matrices with the estimator's scaling (the reference for hsic_terms):
// biased tr(K H L H) / (n-1)^2; debiased Song et al.'s formula with zeroed diagonals.
torch::Tensor hsic_gram(const torch::Tensor& k, const torch::Tensor& l, CkaEstimator estimator);

}  // namespace qad::loss
