// Linear CKA: feature form with an analytic backward (custom autograd Function), Gram form as reference.
// Notation (docs/losses.md): Xc, Yc centred; A = Yc^T Xc; Gx = Xc^T Xc; Gy = Yc^T Yc; s = row squared norms;
// dps(X,Y) = ||A||^2 [- n/(n-2) <sx,sy> + |Xc|^2 |Yc|^2 / ((n-1)(n-2)) when debiased]; CKA = f / sqrt(gx gy).
#include "loss/cka.h"

#include <cmath>
#include <tuple>

#include "loss/cka_kernels.h"
#include "loss/token_rows.h"
#include "util/error.h"
#include "util/torch_compat.h"

namespace qad::loss {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

torch::ScalarType compute_type(const torch::Tensor& x, const torch::Tensor& y) {
  return x.scalar_type() == torch::kFloat64 || y.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

void check_pair(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator est, const char* what) {
  QAD_CHECK(x.defined() && y.defined(), "{}: undefined feature tensor", what);
  QAD_CHECK(x.dim() == 2 && y.dim() == 2, "{}: features must be [tokens, hidden]; got x {} and y {}", what,
            detail::shape_str(x.sizes()), detail::shape_str(y.sizes()));
  QAD_CHECK(x.size(0) == y.size(0), "{}: x has {} rows (tokens) but y has {}; both must hold the same tokens", what,
            x.size(0), y.size(0));
  QAD_CHECK(x.is_floating_point() && y.is_floating_point(), "{}: features must be floating point", what);
  QAD_CHECK(x.device() == y.device(), "{}: x and y are on different devices", what);
  const int64_t need = est == CkaEstimator::kDebiased ? 4 : 2;
  QAD_CHECK(x.size(0) >= need, "{}: {} CKA needs at least {} tokens, got {}", what,
            est == CkaEstimator::kDebiased ? "debiased" : "biased", need, x.size(0));
  QAD_CHECK(x.size(1) > 0 && y.size(1) > 0, "{}: features have an empty hidden dimension", what);
}

// Squared Frobenius norm of each [.., r, c] matrix of a [L, r, c] batch, accumulated in FP64: [L].
torch::Tensor sq_norms(const torch::Tensor& m) { return m.square().sum({1, 2}, false, torch::kFloat64); }

// Per-layer FP64 scalars [L] as [L, 1, 1] in the compute dtype, to scale a batch of matrices.
torch::Tensor per_layer(const torch::Tensor& v, torch::ScalarType ct) { return v.to(ct).view({-1, 1, 1}); }

// Which products to form. Feature form: A = Yc^T Xc [p2,p1], Gx [p1,p1], Gy [p2,p2]; Gram form: K = Xc Xc^T,
// L = Yc Yc^T [n,n]. Both give |A|^2 = <K,L>, |Gx|^2 = |K|^2, |Gy|^2 = |L|^2; the Gram form is cheaper (and
// needs less memory) when there are fewer tokens than features, e.g. 1024 sampled tokens of a 2048-wide model.
bool use_gram_form(int64_t n, int64_t p1, int64_t p2) { return n * (p1 + p2) < p1 * p2 + p1 * p1 + p2 * p2; }

// Where the Gram form of the biased estimator forms its products: from FP32 (TF32) centred features, or from the
// BF16 rows as they are with FP32 accumulation, centred in the Gram (cka.h, bf16_products). kBf16OnCuda is what
// bf16_products asks for; kBf16 takes the BF16 path on any device (detail::linear_cka_batched_bf16, for tests).
enum class Products { kFloat, kBf16OnCuda, kBf16 };

// The three unscaled dps terms of L (X, Y) pairs at once, plus what the backward reuses.
struct Core {
  int64_t n = 0;
  bool gram = false;
  // Gram centring (the BF16 path): xc, yc hold the rows as they are in BF16, K and L are X X^T and Y Y^T, and the
  // centring H K H happens in the n x n kernels (cka_kernels.h); the means are what the backward re-centres with.
  bool gram_centred = false;
  torch::Tensor xc, yc, mean_x, mean_y;  // compute dtype, [L, n, p] and [L, 1, p]
  torch::Tensor a, gx, gy;               // feature form: A = Yc^T Xc [L,p2,p1], Gx [L,p1,p1], Gy [L,p2,p2]
  // Gram form: K = Xc Xc^T, L = Yc Yc^T [L,n,n] as one strip each; gram_centred: K = X X^T, L = Y Y^T as the
  // strips of their upper block triangle (cka_kernels.h)
  kernels::GramStrips k, l;
  torch::Tensor k_row_means, l_row_means, k_mean, l_mean;  // gram_centred: FP32 [L, n] and [L]
  torch::Tensor f, fxx, fyy;             // FP64 [L]: dps(X,Y), dps(X,X), dps(Y,Y)
  torch::Tensor sx, sy;                  // debiased: FP64 row squared norms of Xc, Yc [L, n]
  torch::Tensor cka, cka_float;          // gram_centred: f / sqrt(fxx fyy), FP64 and FP32 [L] (GramSums')
};

// BF16 products of the uncentred rows, centred in the Gram: the forward writes no centred copy of either side, and
// the products read the hidden states' own BF16 values (no rounding of centred values). The price is that K holds
// the rows' raw second moments: its FP32 accumulation error is relative to |x_i||x_j| rather than to the centred
// |xc_i||xc_j|. For the CKA value this stays far below the BF16 path's other rounding (docs/losses.md, "BF16
// products"; tested against FP64 with column offsets of 20 spreads). The backward centres the differentiated side.
void gram_centred_core(Core& c, const torch::Tensor& x, const torch::Tensor& y) {
  // BF16 (compute_core's gate). Rows of contiguous features are read where they lie, whatever the layer stride: a
  // contiguous copy of rows with scratch rows between the layers (linear_cka_batched) would lose the scratch.
  auto rows = [](const torch::Tensor& t) {
    const bool row_major = t.stride(2) == 1 && t.stride(1) == t.size(2) && t.stride(0) >= t.size(1) * t.size(2);
    return row_major ? t.detach() : t.detach().contiguous();
  };
  c.gram_centred = true;
  c.xc = rows(x);
  c.yc = rows(y);
  // K and L are symmetric: only their upper block triangle is formed (5/8 of the products for 1024 tokens).
  std::tie(c.k, c.l) = kernels::gram_strips(c.xc, c.yc);
  const int64_t L = c.xc.size(0);
  auto f32 = c.k.strips[0].options();
  auto sums = torch::empty({L, 3}, f32.dtype(torch::kFloat64));
  c.k_row_means = torch::empty({L, c.n}, f32), c.l_row_means = torch::empty({L, c.n}, f32);
  c.k_mean = torch::empty({L}, f32), c.l_mean = torch::empty({L}, f32);
  c.cka = torch::empty({L}, f32.dtype(torch::kFloat64)), c.cka_float = torch::empty({L}, f32);
  kernels::GramSums g{c.k, c.l, sums, c.k_row_means, c.l_row_means, c.k_mean, c.l_mean, c.cka, c.cka_float};
  kernels::centred_gram_sums(g);
  c.f = sums.select(1, 0), c.fxx = sums.select(1, 1), c.fyy = sums.select(1, 2);
}

Core compute_core(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator est,
                  Products products = Products::kFloat) {
  torch::NoGradGuard no_grad;
  Core c;
  const auto ct = compute_type(x, y);
  c.n = x.size(1);
  c.gram = use_gram_form(c.n, x.size(2), y.size(2));
  // BF16 rows only: rounding FP32 (or FP16) features to BF16 before the centring would add noise of 2^-9 times
  // their column offsets, where the BF16 path otherwise reads the hidden states exactly.
  const bool bf16 = (products == Products::kBf16 || (products == Products::kBf16OnCuda && x.is_cuda())) &&
                    x.scalar_type() == torch::kBFloat16 && y.scalar_type() == torch::kBFloat16 && c.gram &&
                    est == CkaEstimator::kBiased;
  if (bf16) {
    gram_centred_core(c, x, y);
    return c;
  }
  // On CUDA one kernel per side centres in one read for the means and one read + write (cka_kernels.h).
  const bool use_kernels = x.is_cuda() && ct == torch::kFloat32;
  auto centre = [&](const torch::Tensor& t, torch::Tensor& centred, torch::Tensor& mean) {
    if (use_kernels) {
      auto in = t.detach().contiguous();
      centred = torch::empty(in.sizes(), in.options().dtype(torch::kFloat32));
      mean = torch::empty({in.size(0), 1, in.size(2)}, in.options().dtype(torch::kFloat32));
      kernels::CentreColumns a{in, centred, mean};
      kernels::centre_columns(a);
    } else {
      // Read in the input dtype and computed in `ct`: the mean converts while it reduces and the subtraction
      // promotes, so a BF16 input takes two passes instead of a cast, a mean and a subtraction over FP32 copies.
      mean = t.detach().mean(1, /*keepdim=*/true, ct);
      centred = torch::sub(t.detach(), mean);
    }
  };
  centre(x, c.xc, c.mean_x);
  centre(y, c.yc, c.mean_y);
  if (c.gram) {
    auto k = c.xc.bmm(c.xc.transpose(1, 2)), l = c.yc.bmm(c.yc.transpose(1, 2));
    if (use_kernels) {
      auto sums = torch::empty({k.size(0), 3}, k.options().dtype(torch::kFloat64));
      kernels::PairSums s{k, l, sums};
      kernels::pair_sums(s);
      c.f = sums.select(1, 0), c.fxx = sums.select(1, 1), c.fyy = sums.select(1, 2);
    } else {
      c.f = (k * l).sum({1, 2}, false, torch::kFloat64);
      c.fxx = sq_norms(k);
      c.fyy = sq_norms(l);
    }
    c.k = k, c.l = l;
  } else {
    c.a = c.yc.transpose(1, 2).bmm(c.xc);
    c.gx = c.xc.transpose(1, 2).bmm(c.xc);
    c.gy = c.yc.transpose(1, 2).bmm(c.yc);
    c.f = sq_norms(c.a);
    c.fxx = sq_norms(c.gx);
    c.fyy = sq_norms(c.gy);
  }
  if (est == CkaEstimator::kDebiased) {
    const double n = static_cast<double>(c.n);
    c.sx = c.xc.square().sum(2, false, torch::kFloat64);  // [L, n]
    c.sy = c.yc.square().sum(2, false, torch::kFloat64);
    const auto& sx = c.sx;
    const auto& sy = c.sy;
    auto nx = sx.sum(1), ny = sy.sum(1);
    const double k1 = n / (n - 2), k2 = 1.0 / ((n - 1) * (n - 2));
    c.f = c.f - k1 * (sx * sy).sum(1) + k2 * nx * ny;
    c.fxx = c.fxx - k1 * sx.square().sum(1) + k2 * nx * nx;
    c.fyy = c.fyy - k1 * sy.square().sum(1) + k2 * ny * ny;
  }
  return c;
}

double hsic_scale(CkaEstimator est, int64_t n_rows) {
  const double n = static_cast<double>(n_rows);
  return est == CkaEstimator::kBiased ? 1.0 / ((n - 1) * (n - 1)) : 1.0 / (n * (n - 3));
}

// The width of the rank-1 correction in the Gram-centred backward: one column of M (and one row of the rows, their
// column means) carries it, zero-padded to 8 so that the product's inner dimension stays a multiple of 8 (16-byte
// BF16 rows for the tensor cores).
constexpr int64_t kCorrectionWidth = 8;

// rows [L, n, p] as the backward saw them: whether kCorrectionWidth rows after each layer's n rows are scratch the
// caller gave us (scratch_rows) and lie inside the storage, so that the rows with their column means appended are
// one strided [L, n + 8, p] tensor.
bool has_correction_room(const torch::Tensor& rows, int64_t scratch_rows) {
  if (scratch_rows < kCorrectionWidth || rows.scalar_type() != torch::kBFloat16 || !rows.has_storage()) return false;
  const int64_t L = rows.size(0), n = rows.size(1), p = rows.size(2);
  if (rows.stride(2) != 1 || rows.stride(1) != p || rows.stride(0) < (n + kCorrectionWidth) * p) return false;
  const int64_t end = rows.storage_offset() + (L - 1) * rows.stride(0) + (n + kCorrectionWidth) * p;
  return end * rows.element_size() <= static_cast<int64_t>(rows.storage().nbytes());
}

// What FeatureCka returns: the layers' CKA [L] (differentiable), or the CKA-QAD term of them,
// {weight * mean_l(1 - CKA_l) (differentiable), mean_l(1 - CKA_l) FP64, CKA FP64 [L]} (kernels::CkaTerm).
struct Output {
  bool term = false;
  double weight = 1.0;
};

// Batched over layers: x [L, n, p1], y [L, n, p2] -> CKA [L], or the term (Output).
struct FeatureCka : public torch::autograd::Function<FeatureCka> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& y,
                               CkaEstimator est, bool grad_x, bool grad_y, Products products, int64_t scratch_rows,
                               Output output) {
    Core c = compute_core(x, y, est, products);
    // (The BF16 path's sums kernel computed the values in the same operations.)
    auto cka = c.cka.defined() ? c.cka : c.f / torch::sqrt(c.fxx * c.fyy);
    // The values' dtype: the centred features' FP32 (FP64), even for BF16 features.
    const auto value_type = c.cka_float.defined() ? torch::kFloat32 : c.xc.scalar_type();
    // The backward reads only the first output's gradient: no zero tensors for the others (each a launch).
    ctx->set_materialize_grads(false);
    ctx->saved_data["term"] = output.term;
    ctx->saved_data["term_weight"] = output.weight;
    if (grad_x || grad_y) {
      // The centred features themselves, not x and y: the backward would otherwise cast and centre both again
      // (four passes over [L, n, p]). Only what the requested gradients read is kept: in the Gram form the
      // differentiated side's features and both kernels; in the feature form both sides and the products.
      const bool keep_xc = grad_x || !c.gram, keep_yc = grad_y || !c.gram;
      ctx->saved_data["xc"] = keep_xc ? c.xc : torch::Tensor();
      ctx->saved_data["yc"] = keep_yc ? c.yc : torch::Tensor();
      ctx->saved_data["sx"] = c.sx;
      ctx->saved_data["sy"] = c.sy;
      ctx->saved_data["x_type"] = static_cast<int64_t>(x.scalar_type());
      ctx->saved_data["y_type"] = static_cast<int64_t>(y.scalar_type());
      ctx->saved_data["debiased"] = est == CkaEstimator::kDebiased;
      ctx->saved_data["gram"] = c.gram;
      ctx->saved_data["gram_centred"] = c.gram_centred;
      ctx->saved_data["scratch_rows"] = scratch_rows;
      ctx->saved_data["k_row_means"] = c.k_row_means;
      ctx->saved_data["l_row_means"] = c.l_row_means;
      ctx->saved_data["k_mean"] = c.k_mean;
      ctx->saved_data["l_mean"] = c.l_mean;
      ctx->saved_data["grad_x"] = grad_x;
      ctx->saved_data["grad_y"] = grad_y;
      ctx->saved_data["a"] = c.a;
      ctx->saved_data["gx"] = grad_x ? c.gx : torch::Tensor();
      ctx->saved_data["gy"] = grad_y ? c.gy : torch::Tensor();
      ctx->saved_data["k"] = c10::List<at::Tensor>(c.k.strips);
      ctx->saved_data["l"] = c10::List<at::Tensor>(c.l.strips);
      ctx->saved_data["fxx"] = c.fxx;
      ctx->saved_data["fyy"] = c.fyy;
      ctx->saved_data["cka"] = cka;
    }
    if (output.term) {
      auto f64 = cka.options().dtype(torch::kFloat64);
      kernels::CkaTerm t{cka, output.weight, torch::empty({}, f64), torch::empty({}, f64.dtype(value_type))};
      kernels::cka_term(t);
      ctx->mark_non_differentiable({t.term, cka});
      return {t.loss, t.term, cka};
    }
    if (c.cka_float.defined()) return {c.cka_float};
    return {cka.to(value_type)};
  }

  // d CKA / d Yc = (2/root) Xc A^T - (2 cka / fyy) Yc Gy  [biased part]
  //              + gamma Yc + diag(r) Yc                  [debiased corrections]
  // then centred over rows (the centring projection's adjoint). X is symmetric with A -> A^T. In the Gram form
  // the biased part is ((2/root) K - (2 cka / fyy) L) Yc, since Xc A^T = K Yc and Yc Gy = L Yc. With Gram
  // centring, K and L there are the centred H K H and H L H (centred on the fly), and Yc is centred here.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    torch::NoGradGuard no_grad;
    const variable_list none(8);
    if (!grad_outputs[0].defined()) return none;
    const bool debiased = ctx->saved_data["debiased"].toBool();
    const bool gram = ctx->saved_data["gram"].toBool();
    const bool gram_centred = ctx->saved_data["gram_centred"].toBool();
    const int64_t scratch_rows = ctx->saved_data["scratch_rows"].toInt();
    const bool grad_x = ctx->saved_data["grad_x"].toBool();
    const bool grad_y = ctx->saved_data["grad_y"].toBool();
    const auto x_type = static_cast<torch::ScalarType>(ctx->saved_data["x_type"].toInt());
    const auto y_type = static_cast<torch::ScalarType>(ctx->saved_data["y_type"].toInt());
    auto xc = ctx->saved_data["xc"].toTensor();
    auto yc = ctx->saved_data["yc"].toTensor();
    const auto& own_c = grad_y ? yc : xc;
    // The per-layer factors in FP32 also when the centred features are BF16 (BF16 products).
    const auto ct = own_c.scalar_type() == torch::kBFloat16 ? torch::kFloat32 : own_c.scalar_type();
    auto fxx = ctx->saved_data["fxx"].toTensor();
    auto cka = ctx->saved_data["cka"].toTensor();
    auto fyy = ctx->saved_data["fyy"].toTensor();
    // The incoming gradient per layer: the values' own, or the term's scalar times d term / d CKA_l = -weight / L
    // (go_scale), folded into the factors below.
    const bool term = ctx->saved_data["term"].toBool();
    const double go_scale = term ? -ctx->saved_data["term_weight"].toDouble() / static_cast<double>(cka.size(0)) : 1.0;
    const auto go_in = term ? grad_outputs[0].reshape({1}).expand({cka.size(0)}) : grad_outputs[0];
    // The per-layer factors: in the BF16 path one kernel forms them (backward_factors), else tensor ops.
    torch::Tensor go, root, alpha;
    if (!gram_centred) {
      go = term ? go_in.to(torch::kFloat64) * go_scale : go_in.to(torch::kFloat64);
      root = torch::sqrt(fxx * fyy);
      alpha = 2.0 / root;
    }
    const double n = static_cast<double>(own_c.size(1));
    torch::Tensor sx, sy, nx, ny;
    if (debiased) {
      sx = ctx->saved_data["sx"].toTensor();
      sy = ctx->saved_data["sy"].toTensor();
      nx = sx.sum(1);
      ny = sy.sum(1);
    }
    // One side: own = the side differentiated (centred), other = the other side, f_own = own's dps,
    // s_* / n_* = row norms / sums; own_gram / cross = the feature-form matrices (own's Gram matrix, the product
    // mapping `other` into own's columns), or own_kernel / other_kernel = the Gram-form n x n kernels.
    auto side = [&](const torch::Tensor& own, const torch::Tensor& other, const torch::Tensor& own_gram,
                    const torch::Tensor& cross, const kernels::GramKernel& own_kernel,
                    const kernels::GramKernel& other_kernel, const torch::Tensor& f_own, const torch::Tensor& s_own,
                    const torch::Tensor& s_other, const torch::Tensor& n_own, const torch::Tensor& n_other,
                    torch::ScalarType input_type) {
      // The incoming gradient `go` scales the small per-layer factors, not the [L, n, p] result.
      torch::Tensor beta, alpha_go;
      if (gram_centred) {
        auto f32 = fxx.options().dtype(torch::kFloat32);
        kernels::BackwardFactors bf{cka,    f_own, fxx, fyy, go_in, torch::empty(cka.sizes(), f32),
                                    torch::empty(cka.sizes(), f32), go_scale};
        kernels::backward_factors(bf);
        beta = bf.beta, alpha_go = bf.alpha;
      } else {
        beta = per_layer(-2.0 * cka / f_own * go, ct);
        alpha_go = per_layer(alpha * go, ct);
      }
      torch::Tensor g;
      if (gram_centred) {
        // M = Kc·β + Lc·α centred on the fly and rounded to BF16 in one pass over both kernels (cka_kernels.h),
        // then a BF16 product with own's rows, accumulated in FP32 and stored in BF16, the hidden states' dtype.
        // M Y would equal M Yc if M's rows summed to zero; after M's BF16 rounding they do not (r = M 1 != 0), and
        // r times the rows' column means mu would reach the gradient (9 % of its largest element for offsets of
        // 20 spreads). With scratch rows after own's rows the correction rides in the product itself:
        // [M | -r | 0] · [Y; mu^T; 0] = M Y - r mu^T = M Yc, one extra column and row in the inner dimension,
        // no centred copy of the rows. Otherwise own's rows are centred first (one read and one write).
        const int64_t L = own.size(0), n_rows = own.size(1), p = own.size(2);
        const bool fold = has_correction_room(own, scratch_rows);
        auto m = torch::empty({L, n_rows, n_rows + (fold ? kCorrectionWidth : 0)},
                              own_kernel.gram.strips[0].options().dtype(torch::kBFloat16));
        kernels::CombineKernels ck{own_kernel, other_kernel, beta, alpha_go, m};
        kernels::combine_kernels(ck);
        if (fold) {
          auto rows = own.as_strided({L, n_rows + kCorrectionWidth, p}, {own.stride(0), p, 1}, own.storage_offset());
          kernels::AppendColumnMeans am{rows, n_rows};
          kernels::append_column_means(am);
          g = m.bmm(rows);
        } else {
          auto own_centred = torch::empty(own.sizes(), own.options());
          kernels::CentreColumns cc{own.contiguous(), own_centred,
                                    torch::empty({L, 1, p}, own.options().dtype(torch::kFloat32))};
          kernels::centre_columns(cc);
          g = m.bmm(own_centred);
        }
      } else if (gram) {
        g = torch::addcmul(own_kernel.gram.strips[0] * beta, other_kernel.gram.strips[0], alpha_go).bmm(own);
      } else {
        g = own.bmm(own_gram * beta).baddbmm_(other, cross * alpha_go);
      }
      if (debiased) {
        auto gamma = 2.0 / ((n - 1) * (n - 2)) * (n_other / root - cka * n_own / f_own);                 // [L]
        auto r = (-2.0 * n / (n - 2)) * (s_other / root.unsqueeze(1) - (cka / f_own).unsqueeze(1) * s_own);  // [L,n]
        g.add_(own * ((r + gamma.unsqueeze(1)) * go.unsqueeze(1)).to(ct).unsqueeze(2));
        g.sub_(g.mean(1, /*keepdim=*/true));
      }
      return g.to(input_type);
    };
    auto a = ctx->saved_data["a"].toTensor();
    const kernels::GramKernel k_side{kernels::GramStrips(ctx->saved_data["k"].toTensorVector()),
                                     ctx->saved_data["k_row_means"].toTensor(), ctx->saved_data["k_mean"].toTensor()};
    const kernels::GramKernel l_side{kernels::GramStrips(ctx->saved_data["l"].toTensorVector()),
                                     ctx->saved_data["l_row_means"].toTensor(), ctx->saved_data["l_mean"].toTensor()};
    torch::Tensor dx, dy;
    if (grad_y) {
      dy = side(yc, xc, ctx->saved_data["gy"].toTensor(), gram ? a : a.transpose(1, 2), l_side, k_side, fyy, sy, sx,
                ny, nx, y_type);
    }
    if (grad_x) dx = side(xc, yc, ctx->saved_data["gx"].toTensor(), a, k_side, l_side, fxx, sx, sy, nx, ny, x_type);
    variable_list grads = none;
    grads[0] = dx, grads[1] = dy;
    return grads;
  }
};

}  // namespace

double HsicTerms::cka() const { return xy / std::sqrt(xx * yy); }

torch::Tensor linear_cka(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator estimator) {
  check_pair(x, y, estimator, "linear_cka");
  const bool grad = torch::GradMode::is_enabled();
  return FeatureCka::apply(x.unsqueeze(0), y.unsqueeze(0), estimator, grad && x.requires_grad(),
                           grad && y.requires_grad(), Products::kFloat, int64_t{0}, Output{})[0]
      .squeeze(0);
}

namespace {

variable_list cka_batched(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator estimator, Products products,
                          int64_t scratch_rows, Output output) {
  QAD_CHECK(x.defined() && y.defined() && x.dim() == 3 && y.dim() == 3 && x.size(0) == y.size(0),
            "linear_cka_batched: features must be [layers, tokens, hidden] with the same number of layers; got x {} "
            "and y {}",
            detail::shape_str(x.defined() ? x.sizes() : at::IntArrayRef{}),
            detail::shape_str(y.defined() ? y.sizes() : at::IntArrayRef{}));
  check_pair(x[0], y[0], estimator, "linear_cka_batched");
  const bool grad = torch::GradMode::is_enabled();
  QAD_CHECK(scratch_rows >= 0, "linear_cka_batched: scratch_rows must be >= 0, got {}", scratch_rows);
  QAD_CHECK(std::isfinite(output.weight), "cka_term_batched: the weight must be finite, got {}", output.weight);
  return FeatureCka::apply(x, y, estimator, grad && x.requires_grad(), grad && y.requires_grad(), products,
                           scratch_rows, output);
}

CkaTermResult term_of(const variable_list& v) { return {v[0], v[1], v[2]}; }

}  // namespace

torch::Tensor linear_cka_batched(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator estimator,
                                 bool bf16_products, int64_t scratch_rows) {
  return cka_batched(x, y, estimator, bf16_products ? Products::kBf16OnCuda : Products::kFloat, scratch_rows,
                     Output{})[0];
}

CkaTermResult cka_term_batched(const torch::Tensor& x, const torch::Tensor& y, double weight, CkaEstimator estimator,
                               bool bf16_products, int64_t scratch_rows) {
  return term_of(cka_batched(x, y, estimator, bf16_products ? Products::kBf16OnCuda : Products::kFloat, scratch_rows,
                             Output{true, weight}));
}

torch::Tensor detail::linear_cka_batched_bf16(const torch::Tensor& x, const torch::Tensor& y, int64_t scratch_rows) {
  return cka_batched(x, y, CkaEstimator::kBiased, Products::kBf16, scratch_rows, Output{})[0];
}

CkaTermResult detail::cka_term_batched_bf16(const torch::Tensor& x, const torch::Tensor& y, double weight,
                                            int64_t scratch_rows) {
  return term_of(cka_batched(x, y, CkaEstimator::kBiased, Products::kBf16, scratch_rows, Output{true, weight}));
}

HsicTerms hsic_terms(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator estimator) {
  check_pair(x, y, estimator, "hsic_terms");
  Core c = compute_core(x.unsqueeze(0), y.unsqueeze(0), estimator);
  const double s = hsic_scale(estimator, c.n);
  auto v = torch::cat({c.f, c.fxx, c.fyy}).cpu();
  auto acc = v.accessor<double, 1>();
  return {acc[0] * s, acc[1] * s, acc[2] * s};
}

torch::Tensor hsic_gram(const torch::Tensor& k, const torch::Tensor& l, CkaEstimator estimator) {
  QAD_CHECK(k.dim() == 2 && k.size(0) == k.size(1) && k.sizes() == l.sizes(),
            "hsic_gram: kernels must be two n x n matrices, got {} and {}", detail::shape_str(k.sizes()),
            detail::shape_str(l.sizes()));
  const double n = static_cast<double>(k.size(0));
  if (estimator == CkaEstimator::kBiased) {
    auto center = [](const torch::Tensor& m) {
      return m - m.mean(0, true) - m.mean(1, true) + m.mean();
    };
    return (center(k) * center(l)).sum() / ((n - 1) * (n - 1));
  }
  QAD_CHECK(k.size(0) >= 4, "hsic_gram: the unbiased estimator needs n >= 4, got {}", k.size(0));
  auto off = 1 - torch::eye(k.size(0), k.options());
  auto kt = k * off, lt = l * off;
  auto trace = (kt * lt).sum();
  auto sums = kt.sum() * lt.sum() / ((n - 1) * (n - 2));
  auto cross = 2.0 / (n - 2) * kt.sum(0).dot(lt.sum(1));
  return (trace + sums - cross) / (n * (n - 3));
}

torch::Tensor linear_cka_gram(const torch::Tensor& x, const torch::Tensor& y, CkaEstimator estimator) {
  check_pair(x, y, estimator, "linear_cka_gram");
  const auto ct = compute_type(x, y);
  auto xd = x.to(ct), yd = y.to(ct);
  auto k = xd.mm(xd.t()), l = yd.mm(yd.t());
  return hsic_gram(k, l, estimator) / torch::sqrt(hsic_gram(k, k, estimator) * hsic_gram(l, l, estimator));
}

}  // namespace qad::loss
