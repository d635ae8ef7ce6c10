// The memory-bound passes of the batched CKA term (cka.cc) as single kernels on CUDA, each beside a plain loop
// reference that tests compare it with:
// - centre_columns: the columns of every layer's token rows centred over the rows, read in the rows' own dtype
//   (BF16 in training) and written in FP32 for the TF32 products (or BF16 for the BF16 path's backward). The tensor-op version (a converting mean, then
//   a broadcast mixed-dtype subtraction) is three passes, the subtraction a non-vectorised kernel (0.63 ms of a
//   1.7B step for 28 layers x 1024 tokens); this is one read for the means and one read + write.
// - pair_sums: <a,b>, <a,a>, <b,b> of two [L, r, c] FP32 batches per layer in FP64, i.e. the three dot products
//   of the Gram form's kernels K and L; one read of each where the tensor ops make five passes and two temporaries.
// The BF16 products path (cka.h) forms K = X X^T and L = Y Y^T from the rows as they are (BF16, not centred: no
// centred copy is written) and centres the n x n kernels instead, Kc = H K H with H = I - 11^T/n. K and L are
// symmetric, so only the strips of their upper block triangle are formed and read (GramStrips):
// - centred_gram_sums: <Kc,Lc>, <Kc,Kc>, <Lc,Lc> per layer in FP64 from one read of K and L, plus the row means
//   and the grand mean of K and L that the backward needs;
// - combine_kernels: the backward's per-layer combination Kc·β + Lc·α, centred on the fly and rounded to BF16 for
//   the BF16 product with the rows; one read of each kernel and one BF16 write. Its optional extra columns carry
//   the rank-1 correction that makes the product with the uncentred rows equal the product with the centred ones
//   (append_column_means writes the matching extra rows), so the backward centres no copy of the rows.
#pragma once
#include <torch/torch.h>

#include <utility>
#include <vector>

namespace qad::loss::kernels {

// x [L, n, p] float32 / bfloat16 / float16, contiguous, n >= 1. Outputs (allocated by the caller, every element
// written): centred [L, n, p] float32 or bfloat16 (the BF16 path's backward) and mean [L, 1, p] float32, where
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

// A symmetric n x n Gram matrix per layer, stored as the strips of its upper block triangle: with nb blocks of
// `block` rows (n = nb * block), strip b holds the rows [b * block, (b + 1) * block) from column b * block on, a
// float32 [L, block, n - b * block] tensor with contiguous rows (any row and layer strides: contiguous, or a view of
// an [L, n, n] buffer whose lower blocks were never written). An entry below the block diagonal (its column's block
// before its row's) is the transpose's: K[i, j] = K[j, i]. The products that form the strips cost (nb + 1) / (2 nb)
// of the full matrix's (5/8 for four blocks), and the passes below read that share of it. One strip (block = n) is
// the whole matrix, as it is (a tensor converts to that).
constexpr int64_t kMaxGramStrips = 8;
struct GramStrips {
  std::vector<torch::Tensor> strips;
  GramStrips() = default;
  GramStrips(torch::Tensor full) : strips{std::move(full)} {}  // NOLINT: one strip, the whole matrix
  explicit GramStrips(std::vector<torch::Tensor> s) : strips(std::move(s)) {}
  int64_t n() const { return strips.empty() ? 0 : strips[0].size(2); }
  int64_t block() const { return strips.empty() ? 0 : strips[0].size(1); }
};
// The blocks per side that gram_strips uses for n rows: four where the strips stay large products (blocks of at
// least 256 rows, a multiple of 8), else two, else one; QAD_CKA_GRAM_BLOCKS=N (2 to 8) asks for N where n allows
// (A/B measurements).
int64_t gram_blocks(int64_t n);
// x [L, n, p] (rows of contiguous features, any layer stride): the strips of X X^T with gram_blocks(n) blocks, each
// a product of x's own dtype with an FP32 result (compat::bmm_fp32_out), contiguous.
GramStrips gram_strips(const torch::Tensor& x);
// Both sides' strips, {X X^T, Y Y^T} (y [L, n, q], the same L and n). On CUDA with BF16 rows (gram_blocks_cuda's
// conditions) every block of both upper triangles is a product of one grouped cuBLAS call, written into [L, n, n]
// buffers whose strips are views: one call keeps the GPU full, where a product per strip leaves it partly idle (the
// small strips are a fraction of a wave). Otherwise gram_strips of each side.
std::pair<GramStrips, GramStrips> gram_strips(const torch::Tensor& x, const torch::Tensor& y);
#ifdef QAD_HAS_CUDA
// Whether gram_blocks_cuda takes these rows: CUDA BF16 [L, n, p] with contiguous rows, p % 8 == 0, 16-byte aligned
// layers, and blocks of a multiple of 8 rows.
bool gram_blocks_cuda_supports(const torch::Tensor& x, const torch::Tensor& y, int64_t block);
// k, l [L, n, n] float32, contiguous: writes the blocks on and above the block diagonal of X X^T and Y Y^T (FP32
// accumulation and result), one cublasGemmBatchedEx call per distinct feature width.
void gram_blocks_cuda(const torch::Tensor& x, const torch::Tensor& y, int64_t block, torch::Tensor& k,
                      torch::Tensor& l);
#endif
// The whole [L, n, n] matrix the strips stand for (references and tests).
torch::Tensor full_gram(const GramStrips& g);

// k, l: the Gram matrices as strips (one layout for both), float32; within a diagonal block row sums stand for
// column sums (a GEMM that rounds K[i, j] and K[j, i] differently shifts the result by the order of K's own FP32
// rounding). Outputs (allocated by the caller, every element written):
//   sums [L, 3] float64 = (<Kc,Lc>, <Kc,Kc>, <Lc,Lc>) with Kc = H K H, from the identity
//     <H K H, H L H> = <K,L> - (2/n) <K1, L1> + (1^T K 1)(1^T L 1) / n^2,
//     every product of two floats exact in double and every sum in double (no n x n centred copy);
//   k_row_means, l_row_means [L, n] float32 = float(row sum in double / n);
//   k_mean, l_mean [L] float32 = float(sum of all elements in double / n^2).
// The identity subtracts raw second moments, but in double: the products are exact and a sum of n^2 terms loses
// ~n^2 * 2^-53 of the raw magnitude, far below K's own FP32 rounding.
// Optional outputs (both or neither), the layers' CKA from those sums in the tensor ops' order, each operation of
// double rounded once: cka [L] float64 = sums[l, 0] / sqrt(sums[l, 1] * sums[l, 2]) and cka_float [L] float32 =
// float(cka). (Four small kernels of tensor ops otherwise, each a launch in the step.)
struct GramSums {
  GramStrips k, l;
  torch::Tensor sums, k_row_means, l_row_means, k_mean, l_mean;
  torch::Tensor cka, cka_float;
};
void centred_gram_sums_reference(GramSums& g);  // sums in the plain loop order
#ifdef QAD_HAS_CUDA
void centred_gram_sums_cuda(GramSums& g);
#endif
void centred_gram_sums(GramSums& g);

// One side's kernel for the backward: the uncentred Gram matrix (strips) and its means from GramSums.
struct GramKernel {
  GramStrips gram;                // float32 strips of an [L, n, n] matrix
  torch::Tensor row_means, mean;  // [L, n], [L]; float32, contiguous
};
// own, other: the two sides' kernels (one strip layout); beta, alpha [L] float32. Output (allocated by the caller,
// every element written): out [L, n, n + e] bfloat16, e >= 0, with K the whole matrix the strips stand for (an entry
// below the block diagonal read from its transpose, then centred in its own row's order), in float arithmetic, each
// operation rounded (no fused multiply-add), bf16 rounding to nearest even,
//   c(K)[l, i, j] = ((K[l, i, j] - row_means[l, i]) - row_means[l, j]) + mean[l]      (the centred kernel)
//   out[l, i, j] = bf16( c(own)[l, i, j] * beta[l] + c(other)[l, i, j] * alpha[l] )   for j < n,
// and with e >= 1 the rank-1 correction column and zeros:
//   out[l, i, n] = bf16( float( -(sum over j < n of double(out[l, i, j])) ) ),   out[l, i, n + 1 ..] = 0.
// (The sum of n BF16 values in double is exact unless their magnitudes span more than 2^(45 - log2 n): any order
// gives the same bits.) With rows R' from append_column_means, out · R' = M · (R - 1 mu^T) + (r - bf16(r)) mu^T for
// M = out[.., :n]: the product with the centred rows, up to the rounding of the small correction r = M 1 (M's
// rows would sum to zero but for their BF16 rounding).
struct CombineKernels {
  GramKernel own, other;
  torch::Tensor beta, alpha, out;
};
void combine_kernels_reference(CombineKernels& c);
#ifdef QAD_HAS_CUDA
void combine_kernels_cuda(CombineKernels& c);
#endif
void combine_kernels(CombineKernels& c);

// The backward's per-layer factors of the BF16 path (cka.cc) from the forward's values: cka, f_own (the
// differentiated side's centred dot product), fxx, fyy [L] float64 and the incoming gradient go [L] float32 or
// float64 (any 1-D strides: an expanded scalar has stride 0), times go_scale. Outputs (allocated by the caller):
// beta, alpha [L] float32 with, in double, each operation rounded once (the order of the tensor ops they replace,
// so the same bits; go_scale = 1 leaves g = double(go[l]) as it is):
//   g = double(go[l]) * go_scale,
//   beta[l] = float(((-2 * cka[l]) / f_own[l]) * g),
//   alpha[l] = float((2 / sqrt(fxx[l] * fyy[l])) * g).
// One launch where the tensor ops take eleven, each a gap in the backward. go_scale carries the CKA-QAD term's
// d term / d cka[l] = -weight / L (CkaTerm) into the factors, so that the term's backward launches nothing.
struct BackwardFactors {
  torch::Tensor cka, f_own, fxx, fyy, go;
  torch::Tensor beta, alpha;
  double go_scale = 1.0;
};
void backward_factors_reference(BackwardFactors& b);
#ifdef QAD_HAS_CUDA
void backward_factors_cuda(BackwardFactors& b);
#endif
void backward_factors(BackwardFactors& b);

// The CKA-QAD term of the layers' CKA values, cka [L] float64 (L >= 1, any 1-D stride), in one launch where the
// tensor ops take six (1 - x, a mean, a cast, the weight; the logged mean once more). Outputs (allocated by the
// caller): term, a 0-dim float64, and loss, a 0-dim float32 or float64, with the sum in layer order in double:
//   term = (sum over l of (1 - cka[l])) / L,   loss = (loss's dtype)(term * weight).
struct CkaTerm {
  torch::Tensor cka;
  double weight = 1.0;
  torch::Tensor term, loss;
};
void cka_term_reference(CkaTerm& t);
#ifdef QAD_HAS_CUDA
void cka_term_cuda(CkaTerm& t);
#endif
void cka_term(CkaTerm& t);

// rows [L, n + e, p] bfloat16, e >= 1, rows of p contiguous elements (any layer stride): the first n rows of each
// layer are data, the e after them scratch. Writes, for every layer and column,
//   rows[l, n, j] = bf16( float( (sum over i < n of double(rows[l, i, j])) / n ) )   (the column mean; the double
//   sum is exact as in combine_kernels), rows[l, n + 1 .., j] = 0,
// and leaves the data rows as they are: the rows that combine_kernels' extra columns multiply.
struct AppendColumnMeans {
  torch::Tensor rows;
  int64_t n = 0;
};
void append_column_means_reference(AppendColumnMeans& a);
#ifdef QAD_HAS_CUDA
void append_column_means_cuda(AppendColumnMeans& a);
#endif
void append_column_means(AppendColumnMeans& a);

}  // namespace qad::loss::kernels
