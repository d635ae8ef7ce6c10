// The plain references of the CKA passes (loss/cka_kernels.h) against closed forms in double on the CPU: column
// means and centred rows of every layer, the three FP64 dot products of two batches, the centred Gram sums and
// means, and the backward's per-layer combination of the two kernels, centred and rounded to BF16; then the BF16
// path of the batched CKA (Gram centring) against FP64. The CUDA kernels are compared with these references in
// cka_kernels_cuda_test.cc.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <utility>
#include <vector>

#include "common/test_util.h"
#include "loss/cka.h"
#include "loss/cka_kernels.h"
#include "util/error.h"

namespace qad::loss {
namespace {

TEST(CkaKernelsReference, CentreColumnsIsTheColumnMeanAndTheDifference) {
  auto gen = qad::testing::seeded_generator(61);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    // An offset much larger than the spread, as residual streams have: the mean must not lose the small part.
    auto x = (torch::randn({3, 37, 20}, gen) + 50.0).to(dtype);
    kernels::CentreColumns a{x, torch::full({3, 37, 20}, NAN), torch::full({3, 1, 20}, NAN)};
    kernels::centre_columns(a);
    auto xd = x.to(torch::kFloat64);
    auto mean = xd.mean(1, true);
    // The mean is the double mean rounded to float (half an ulp of 50 is 1.9e-6); the centred rows are one FP32
    // subtraction from it.
    EXPECT_LE((a.mean.to(torch::kFloat64) - mean).abs().max().item<double>(), 4e-6) << c10::toString(dtype);
    auto expect = (x.to(torch::kFloat32) - a.mean);
    EXPECT_TRUE(torch::equal(a.centred, expect)) << c10::toString(dtype);
    EXPECT_LE((a.centred.to(torch::kFloat64) - (xd - mean)).abs().max().item<double>(), 4e-6) << c10::toString(dtype);
    EXPECT_LE(a.centred.to(torch::kFloat64).sum(1).abs().max().item<double>(), 1e-4) << c10::toString(dtype);
  }
}

TEST(CkaKernelsReference, CentreColumnsIntoBf16RoundsOnce) {
  auto gen = qad::testing::seeded_generator(67);
  auto x = (torch::randn({2, 19, 16}, gen) + 7.0).to(torch::kBFloat16);
  kernels::CentreColumns a{x, torch::full({2, 19, 16}, NAN).to(torch::kBFloat16), torch::full({2, 1, 16}, NAN)};
  kernels::centre_columns(a);
  EXPECT_TRUE(torch::equal(a.centred, (x.to(torch::kFloat32) - a.mean).to(torch::kBFloat16)));
}

TEST(CkaKernelsReference, PairSumsAreTheThreeDotProductsPerLayer) {
  auto gen = qad::testing::seeded_generator(62);
  auto a = torch::randn({4, 33, 17}, gen), b = torch::randn({4, 33, 17}, gen);
  kernels::PairSums s{a, b, torch::full({4, 3}, NAN, torch::kFloat64)};
  kernels::pair_sums(s);
  auto ad = a.to(torch::kFloat64), bd = b.to(torch::kFloat64);
  // Products rounded to float as the tensor ops form them, summed in double.
  auto ab = (a * b).to(torch::kFloat64).sum({1, 2}), aa = (a * a).to(torch::kFloat64).sum({1, 2}),
       bb = (b * b).to(torch::kFloat64).sum({1, 2});
  auto expect = torch::stack({ab, aa, bb}, 1);
  EXPECT_TRUE(torch::allclose(s.out, expect, 1e-12, 1e-12));
  // And close to the exact products.
  EXPECT_TRUE(torch::allclose(s.out.select(1, 0), (ad * bd).sum({1, 2}), 1e-6, 1e-6));
}

// Gram matrices of rows with a common offset (as residual streams have), in FP32 as the products store them, made
// exactly symmetric (a GEMM need not round K[i, j] and K[j, i] alike; the kernels read row sums as column sums).
torch::Tensor gram_of(const torch::Tensor& rows) {
  auto k = rows.bmm(rows.transpose(1, 2));
  return (k + k.transpose(1, 2)) / 2;
}

// H K H in double, per layer: the centred kernel the sums and the combination stand for.
torch::Tensor centred_fp64(const torch::Tensor& k) {
  auto d = k.to(torch::kFloat64);
  return d - d.mean(1, true) - d.mean(2, true) + d.mean({1, 2}, true);
}

TEST(CkaKernelsReference, CentredGramSumsAreTheCentredKernelsDotProducts) {
  auto gen = qad::testing::seeded_generator(69);
  const int64_t L = 3, n = 40, p = 24;
  auto x = torch::randn({L, n, p}, gen) + 5.0, y = torch::randn({L, n, p}, gen) * 2 - 3.0;
  auto k = gram_of(x), l = gram_of(y);
  auto f32 = torch::dtype(torch::kFloat32);
  kernels::GramSums g{k, l, torch::full({L, 3}, NAN, torch::kFloat64), torch::full({L, n}, NAN, f32),
                      torch::full({L, n}, NAN, f32), torch::full({L}, NAN, f32), torch::full({L}, NAN, f32)};
  kernels::centred_gram_sums(g);
  auto kc = centred_fp64(k), lc = centred_fp64(l);
  auto expect = torch::stack({(kc * lc).sum({1, 2}), (kc * kc).sum({1, 2}), (lc * lc).sum({1, 2})}, 1);
  // The identity in double against the explicit centring in double: equal to ~1e-13 of the raw magnitudes.
  EXPECT_TRUE(torch::allclose(g.sums, expect, 1e-9, 0));
  // The means are the double means rounded to float.
  auto kd = k.to(torch::kFloat64);
  EXPECT_TRUE(torch::equal(g.k_row_means, kd.mean(2).to(torch::kFloat32)));
  EXPECT_TRUE(torch::equal(g.l_row_means, l.to(torch::kFloat64).mean(2).to(torch::kFloat32)));
  EXPECT_TRUE(torch::equal(g.k_mean, kd.mean({1, 2}).to(torch::kFloat32)));
  EXPECT_TRUE(torch::equal(g.l_mean, l.to(torch::kFloat64).mean({1, 2}).to(torch::kFloat32)));
  // And the centred dot products of linear CKA: <Kc, Lc> = |Yc^T Xc|^2 for the centred rows.
  auto xc = (x - x.mean(1, true)).to(torch::kFloat64), yc = (y - y.mean(1, true)).to(torch::kFloat64);
  auto a = yc.transpose(1, 2).bmm(xc);
  EXPECT_TRUE(torch::allclose(g.sums.select(1, 0), a.square().sum({1, 2}), 1e-4, 0));
  kernels::GramSums bad{k, l, torch::empty({L, 3}), g.k_row_means, g.l_row_means, g.k_mean, g.l_mean};
  EXPECT_THROW(kernels::centred_gram_sums(bad), qad::Error);
  kernels::GramSums only_one{k, l, g.sums, g.k_row_means, g.l_row_means, g.k_mean, g.l_mean,
                             torch::empty({L}, torch::kFloat64)};
  EXPECT_THROW(kernels::centred_gram_sums(only_one), qad::Error);
  kernels::GramSums not_square{torch::randn({L, n, n + 1}), torch::randn({L, n, n + 1}), g.sums, g.k_row_means,
                               g.l_row_means, g.k_mean, g.l_mean};
  EXPECT_THROW(kernels::centred_gram_sums(not_square), qad::Error);
}

TEST(CkaKernelsReference, CombineKernelsCentresEachKernelThenRoundsTheCombinationToBf16) {
  auto gen = qad::testing::seeded_generator(67);
  const int64_t L = 3, n = 21;
  auto own = gram_of(torch::randn({L, n, 16}, gen) + 2.0), other = gram_of(torch::randn({L, n, 16}, gen) - 1.0);
  auto beta = torch::randn({L}, gen), alpha = torch::randn({L}, gen);
  auto f32 = torch::dtype(torch::kFloat32);
  kernels::GramSums g{own, other, torch::empty({L, 3}, torch::kFloat64), torch::empty({L, n}, f32),
                      torch::empty({L, n}, f32), torch::empty({L}, f32), torch::empty({L}, f32)};
  kernels::centred_gram_sums(g);
  const kernels::GramKernel own_k{own, g.k_row_means, g.k_mean}, other_k{other, g.l_row_means, g.l_mean};
  kernels::CombineKernels c{own_k, other_k, beta, alpha, torch::full({L, n, n}, NAN, torch::kBFloat16)};
  kernels::combine_kernels(c);
  // FP32 tensor ops round every subtraction, addition and product on their own; the cast rounds to nearest even.
  auto centre = [](const torch::Tensor& k, const torch::Tensor& rows, const torch::Tensor& mean) {
    return ((k - rows.unsqueeze(2)) - rows.unsqueeze(1)) + mean.view({-1, 1, 1});
  };
  auto kc = centre(own, g.k_row_means, g.k_mean), lc = centre(other, g.l_row_means, g.l_mean);
  auto expect = (kc * beta.view({L, 1, 1}) + lc * alpha.view({L, 1, 1})).to(torch::kBFloat16);
  EXPECT_TRUE(qad::testing::same_bits(c.out, expect));
  // The centred kernel is H K H (to FP32 rounding of the raw values) and has zero row sums: what makes M Y = M Yc.
  EXPECT_LE((kc.to(torch::kFloat64) - centred_fp64(own)).abs().max().item<double>(),
            1e-5 * own.abs().max().item<double>());
  // Per layer: layer 1 uses beta[1] and alpha[1], not another layer's.
  auto layer1 = (kc[1] * beta[1].item<float>() + lc[1] * alpha[1].item<float>()).to(torch::kBFloat16);
  EXPECT_TRUE(qad::testing::same_bits(c.out[1], layer1));
  // The correction columns (out wider than n): the first n columns are the plain combination's bits, column n
  // minus the rounded row's sum (in double, then float, then BF16), the rest zeros; with them the row sums of the
  // widened M cancel to the rounding of that one value.
  const int64_t e = 8;
  kernels::CombineKernels wide{own_k, other_k, beta, alpha, torch::full({L, n, n + e}, NAN, torch::kBFloat16)};
  kernels::combine_kernels(wide);
  EXPECT_TRUE(qad::testing::same_bits(wide.out.narrow(2, 0, n).contiguous(), c.out));
  auto row_sums = c.out.to(torch::kFloat64).sum(2);
  auto want = (-row_sums).to(torch::kFloat32).to(torch::kBFloat16);
  EXPECT_TRUE(qad::testing::same_bits(wide.out.select(2, n).contiguous(), want));
  EXPECT_EQ(wide.out.narrow(2, n + 1, e - 1).abs().max().item<float>(), 0.0f);
  // The correction is real (M's rows do not sum to zero after rounding) and cancels them to its own rounding.
  EXPECT_GT(row_sums.abs().max().item<double>(), 0.0);
  const double left = wide.out.to(torch::kFloat64).sum(2).abs().max().item<double>();
  EXPECT_LE(left, std::ldexp(row_sums.abs().max().item<double>(), -8));
  kernels::CombineKernels narrow{own_k, other_k, beta, alpha, torch::empty({L, n, n - 1}, torch::kBFloat16)};
  EXPECT_THROW(kernels::combine_kernels(narrow), qad::Error);
  kernels::CombineKernels bad_out{own_k, other_k, beta, alpha, torch::empty({L, n, n})};
  EXPECT_THROW(kernels::combine_kernels(bad_out), qad::Error);
  kernels::CombineKernels bad_scale{own_k, other_k, torch::randn({2}), alpha, torch::empty({L, n, n}, torch::kBFloat16)};
  EXPECT_THROW(kernels::combine_kernels(bad_scale), qad::Error);
  kernels::CombineKernels bad_means{own_k, {other, g.l_row_means, torch::empty({L + 1})}, beta, alpha,
                                    torch::empty({L, n, n}, torch::kBFloat16)};
  EXPECT_THROW(kernels::combine_kernels(bad_means), qad::Error);
}

// Column means of the first n rows into row n (double sum, float mean, BF16), zeros after it, the data untouched;
// the layers a stride apart (the rows inside a larger buffer).
TEST(CkaKernelsReference, AppendColumnMeansWritesTheMeansAndZerosIntoTheScratch) {
  auto gen = qad::testing::seeded_generator(75);
  const int64_t L = 3, n = 10, e = 8, p = 24;
  auto buffer = torch::full({L, n + e + 2, p}, NAN, torch::kBFloat16);
  auto data = (torch::randn({L, n, p}, gen) * 3 + 5).to(torch::kBFloat16);
  buffer.narrow(1, 0, n).copy_(data);
  kernels::AppendColumnMeans a{buffer.narrow(1, 0, n + e), n};
  kernels::append_column_means(a);
  EXPECT_TRUE(qad::testing::same_bits(buffer.narrow(1, 0, n).contiguous(), data));
  auto want = (data.to(torch::kFloat64).sum(1) / static_cast<double>(n)).to(torch::kFloat32).to(torch::kBFloat16);
  EXPECT_TRUE(qad::testing::same_bits(buffer.select(1, n).contiguous(), want));
  EXPECT_EQ(buffer.narrow(1, n + 1, e - 1).abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(torch::isnan(buffer.narrow(1, n + e, 2).to(torch::kFloat32)).all().item<bool>());  // past the scratch
  kernels::AppendColumnMeans no_room{buffer.narrow(1, 0, n), n};
  EXPECT_THROW(kernels::append_column_means(no_room), qad::Error);
  kernels::AppendColumnMeans fp32{torch::zeros({L, n + e, p}), n};
  EXPECT_THROW(kernels::append_column_means(fp32), qad::Error);
}

// rows [L, n, p] inside a buffer with `scratch` poisoned rows after each layer's rows (as model::ForwardOutput
// gathers them), as a leaf that needs a gradient.
std::pair<torch::Tensor, torch::Tensor> leaf_with_scratch(const torch::Tensor& rows, int64_t scratch) {
  auto buffer = torch::full({rows.size(0), rows.size(1) + scratch, rows.size(2)}, NAN, rows.options());
  buffer.narrow(1, 0, rows.size(1)).copy_(rows);
  return {buffer, buffer.narrow(1, 0, rows.size(1)).detach().requires_grad_(true)};
}

// With scratch rows after the student's rows the backward folds the centring into its product ([M | -r] times
// [Y; mu]) instead of centring a copy: the same FP64 bounds as the copy, a gradient within BF16 rounding of the
// copy's, the column means written into the scratch and the rows themselves untouched. Too little scratch (or none)
// takes the copy.
TEST(CkaBf16Path, ScratchRowsFoldTheCentringIntoTheProduct) {
  auto gen = qad::testing::seeded_generator(76);
  for (double offset : {4.0, 20.0}) {
    const int64_t L = 3, n = 96, p = 512;
    auto t = (torch::randn({L, n, p}, gen) + offset).to(torch::kBFloat16);
    auto s = (t.to(torch::kFloat32) + 0.3 * torch::randn({L, n, p}, gen)).to(torch::kBFloat16);
    auto y_64 = s.to(torch::kFloat64).requires_grad_(true);
    linear_cka_batched(t.to(torch::kFloat64), y_64).sum().backward();
    auto y_copy = s.clone().requires_grad_(true);
    auto c_copy = detail::linear_cka_batched_bf16(t, y_copy);
    c_copy.sum().backward();
    const double scale = y_64.grad().abs().max().item<double>();
    for (int64_t scratch : {8, 12, 7}) {
      const std::string what = "offset " + std::to_string(offset) + ", scratch " + std::to_string(scratch);
      auto [buffer, y] = leaf_with_scratch(s, scratch);
      auto c = detail::linear_cka_batched_bf16(t, y, scratch);
      EXPECT_TRUE(torch::equal(c, c_copy)) << what;  // the forward is the same
      c.sum().backward();
      const double err = (y.grad().to(torch::kFloat64) - y_64.grad()).abs().max().item<double>();
      const double vs_copy = (y.grad().to(torch::kFloat64) - y_copy.grad().to(torch::kFloat64)).abs().max().item<double>();
      std::cout << what << ": gradient error " << err / scale << " of its largest element, " << vs_copy / scale
                << " from the centred copy's\n";
      EXPECT_LE(err, 2e-2 * scale) << what;
      EXPECT_LE(vs_copy, 2e-2 * scale) << what;
      EXPECT_TRUE(qad::testing::same_bits(buffer.narrow(1, 0, n).contiguous(), s)) << what;
      auto scratch_rows = buffer.narrow(1, n, scratch).to(torch::kFloat32);
      if (scratch < 8) {
        EXPECT_TRUE(torch::isnan(scratch_rows).all().item<bool>()) << what;  // the copy's path: untouched
        EXPECT_TRUE(qad::testing::same_bits(y.grad(), y_copy.grad())) << what;
      } else {
        auto mean = (s.to(torch::kFloat64).sum(1) / static_cast<double>(n)).to(torch::kFloat32).to(torch::kBFloat16);
        EXPECT_TRUE(qad::testing::same_bits(buffer.select(1, n).contiguous(), mean)) << what;
        EXPECT_EQ(buffer.narrow(1, n + 1, 7).abs().max().item<float>(), 0.0f) << what;
        EXPECT_FALSE(qad::testing::same_bits(y.grad(), y_copy.grad())) << what;  // the other path really ran
      }
    }
  }
}

// The CKA-QAD term on the BF16 path (with scratch rows, as in training): the values the composition's FP32 values
// round, its loss to float rounding, and its gradient up to the rounding of the per-layer factors (the term scales
// the incoming gradient in double where the composition's backward forms -weight / L in float ops).
TEST(CkaBf16Path, TermEqualsTheValuesCompositionInValueAndGradient) {
  auto gen = qad::testing::seeded_generator(78);
  const int64_t L = 3, n = 96, p = 512;
  auto t = (torch::randn({L, n, p}, gen) + 4.0).to(torch::kBFloat16);
  auto s = (t.to(torch::kFloat32) + 0.3 * torch::randn({L, n, p}, gen)).to(torch::kBFloat16);
  auto [buffer1, y1] = leaf_with_scratch(s, 8);
  auto [buffer2, y2] = leaf_with_scratch(s, 8);
  const double weight = 0.1;
  auto term = detail::cka_term_batched_bf16(t, y1, weight, 8);
  auto values = detail::linear_cka_batched_bf16(t, y2, 8);
  auto composed = (1 - values).mean() * weight;
  EXPECT_EQ(term.loss.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(term.per_layer.to(torch::kFloat32), values.detach()));
  EXPECT_NEAR(term.loss.item<double>(), composed.item<double>(), 1e-8);
  EXPECT_NEAR(term.term.item<double>(), (1 - values.to(torch::kFloat64)).mean().item<double>(), 1e-7);
  term.loss.backward();
  composed.backward();
  const double scale = y2.grad().abs().max().item<double>();
  const double diff = (y1.grad().to(torch::kFloat64) - y2.grad().to(torch::kFloat64)).abs().max().item<double>();
  EXPECT_GT(scale, 0.0);
  EXPECT_LE(diff, 1e-2 * scale);
}

// The BF16 path (Gram centring) against FP64 on the CPU: with rows offset by 4 and by 20 times their spread in
// every column (residual streams have offsets of the order of their spread), CKA within 5e-5 and the gradient
// within 2 % of its largest element, as the CUDA test holds the kernels' version.
TEST(CkaBf16Path, GramCentringMatchesFp64ValueAndGradient) {
  auto gen = qad::testing::seeded_generator(70);
  for (double offset : {4.0, 20.0}) {
    const int64_t L = 3, n = 96, p = 512;
    auto t = (torch::randn({L, n, p}, gen) + offset).to(torch::kBFloat16);
    auto s = (t.to(torch::kFloat32) + 0.3 * torch::randn({L, n, p}, gen)).to(torch::kBFloat16);
    // The student's side (y) as in training, then both sides at once (x's gradient takes the other argument order).
    for (bool grad_x : {false, true}) {
      const std::string what = "offset " + std::to_string(offset) + (grad_x ? ", both gradients" : ", y's gradient");
      auto x_bf = t.clone().requires_grad_(grad_x), y_bf = s.clone().requires_grad_(true);
      auto x_64 = t.to(torch::kFloat64).requires_grad_(grad_x), y_64 = s.to(torch::kFloat64).requires_grad_(true);
      auto c_bf = detail::linear_cka_batched_bf16(x_bf, y_bf);
      auto c_64 = linear_cka_batched(x_64, y_64);
      EXPECT_EQ(c_bf.scalar_type(), torch::kFloat32);
      const double value_err = (c_bf.to(torch::kFloat64) - c_64).abs().max().item<double>();
      EXPECT_LE(value_err, 5e-5) << what;
      c_bf.sum().backward();
      c_64.sum().backward();
      std::vector<std::pair<torch::Tensor, torch::Tensor>> grads = {{y_bf.grad(), y_64.grad()}};
      if (grad_x) grads.emplace_back(x_bf.grad(), x_64.grad());
      for (const auto& [got, want] : grads) {
        ASSERT_EQ(got.scalar_type(), torch::kBFloat16) << what;
        const double scale = want.abs().max().item<double>();
        const double grad_err = (got.to(torch::kFloat64) - want).abs().max().item<double>();
        EXPECT_LE(grad_err, 2e-2 * scale) << what;
        // Centred over the rows (the centring's adjoint) up to the BF16 rounding of M and of the result.
        const double col_sum = got.to(torch::kFloat64).sum(1).abs().max().item<double>();
        EXPECT_LE(col_sum, 2e-2 * scale * std::sqrt(static_cast<double>(n))) << what;
        std::cout << what << ": |cka - fp64| " << value_err << ", gradient error " << grad_err / scale
                  << " of its largest element, column sums " << col_sum / scale << "\n";
      }
    }
  }
}

// Where the path does not apply it is not taken: the feature form (more tokens than features), FP64, and FP32 rows
// (which it would have to round) give the float path's values.
TEST(CkaBf16Path, FeatureFormFp64AndFp32RowsKeepTheFloatPath) {
  auto gen = qad::testing::seeded_generator(71);
  auto x = (torch::randn({2, 600, 64}, gen) + 1.0).to(torch::kBFloat16), y = torch::randn({2, 600, 64}, gen).to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(detail::linear_cka_batched_bf16(x, y), linear_cka_batched(x, y)));
  auto xd = torch::randn({2, 30, 64}, gen).to(torch::kFloat64), yd = torch::randn({2, 30, 64}, gen).to(torch::kFloat64);
  EXPECT_TRUE(torch::equal(detail::linear_cka_batched_bf16(xd, yd), linear_cka_batched(xd, yd)));
  auto xf = torch::randn({2, 30, 64}, gen) + 5.0, yf = torch::randn({2, 30, 64}, gen);
  EXPECT_TRUE(torch::equal(detail::linear_cka_batched_bf16(xf, yf), linear_cka_batched(xf, yf)));
  // ... while BF16 rows of the same shape take it (values differ from the float path in the last digits).
  auto xb = xf.to(torch::kBFloat16), yb = yf.to(torch::kBFloat16);
  EXPECT_FALSE(torch::equal(detail::linear_cka_batched_bf16(xb, yb), linear_cka_batched(xb, yb)));
}

TEST(CkaKernelsReference, CentredGramSumsGiveTheLayersCkaAsTheTensorOpsDo) {
  auto gen = qad::testing::seeded_generator(73);
  const int64_t L = 4, n = 24, p = 16;
  auto x = torch::randn({L, n, p}, gen) + 2.0, y = torch::randn({L, n, p}, gen) * 3 - 1.0;
  y.select(0, 1).copy_(x.select(0, 1) * 2);  // one layer where the two sides agree: CKA 1
  auto f32 = torch::dtype(torch::kFloat32);
  kernels::GramSums g{gram_of(x),
                      gram_of(y),
                      torch::full({L, 3}, NAN, torch::kFloat64),
                      torch::full({L, n}, NAN, f32),
                      torch::full({L, n}, NAN, f32),
                      torch::full({L}, NAN, f32),
                      torch::full({L}, NAN, f32),
                      torch::full({L}, NAN, torch::kFloat64),
                      torch::full({L}, NAN, f32)};
  kernels::centred_gram_sums(g);
  auto f = g.sums.select(1, 0), fxx = g.sums.select(1, 1), fyy = g.sums.select(1, 2);
  const auto expect = f / torch::sqrt(fxx * fyy);  // what the batched CKA computed from the sums before
  EXPECT_TRUE(torch::equal(g.cka, expect)) << g.cka << expect;
  EXPECT_TRUE(torch::equal(g.cka_float, expect.to(torch::kFloat32)));
  EXPECT_NEAR(g.cka[1].item<double>(), 1.0, 1e-9);
  EXPECT_LT(g.cka[0].item<double>(), 0.9);
}

// The tensor ops the kernel replaces (cka.cc's backward before it), in their order.
std::pair<torch::Tensor, torch::Tensor> factors_by_tensor_ops(const kernels::BackwardFactors& b) {
  auto go = b.go.to(torch::kFloat64);
  auto alpha = 2.0 / torch::sqrt(b.fxx * b.fyy);
  return {(-2.0 * b.cka / b.f_own * go).to(torch::kFloat32), (alpha * go).to(torch::kFloat32)};
}

TEST(CkaKernelsReference, BackwardFactorsAreTheTensorOpsBitForBit) {
  auto gen = qad::testing::seeded_generator(74);
  const int64_t L = 29;
  auto f64 = torch::dtype(torch::kFloat64);
  // fxx, fyy, f_own as the columns of one [L, 3] sums tensor (strided views), as the backward passes them.
  auto sums = torch::rand({L, 3}, gen, f64) * 1e6 + 1.0;
  auto cka = torch::rand({L}, gen, f64);
  for (auto go_type : {torch::kFloat32, torch::kFloat64}) {
    auto go = (torch::randn({2 * L}, gen, f64) * 0.03).to(go_type).slice(0, 0, 2 * L, 2);  // stride 2
    kernels::BackwardFactors b{cka, sums.select(1, 2), sums.select(1, 1), sums.select(1, 2), go,
                               torch::full({L}, NAN, torch::kFloat32), torch::full({L}, NAN, torch::kFloat32)};
    kernels::backward_factors(b);
    auto [beta, alpha] = factors_by_tensor_ops(b);
    EXPECT_TRUE(torch::equal(b.beta, beta)) << c10::toString(go_type);
    EXPECT_TRUE(torch::equal(b.alpha, alpha)) << c10::toString(go_type);
    // And the closed form of one layer.
    const double g = go[3].item<double>(), root = std::sqrt(sums[3][1].item<double>() * sums[3][2].item<double>());
    EXPECT_FLOAT_EQ(b.alpha[3].item<float>(), static_cast<float>(2.0 / root * g));
    EXPECT_FLOAT_EQ(b.beta[3].item<float>(), static_cast<float>(-2.0 * cka[3].item<double>() / sums[3][2].item<double>() * g));
  }
  kernels::BackwardFactors wrong{cka.to(torch::kFloat32), sums.select(1, 0), sums.select(1, 1), sums.select(1, 2),
                                 cka, torch::empty({L}), torch::empty({L})};
  EXPECT_THROW(kernels::backward_factors(wrong), qad::Error);
  kernels::BackwardFactors short_out{cka, sums.select(1, 0), sums.select(1, 1), sums.select(1, 2), cka,
                                     torch::empty({L - 1}), torch::empty({L})};
  EXPECT_THROW(kernels::backward_factors(short_out), qad::Error);
}

// go_scale multiplies the incoming gradient in double before the factors: with a power of two (exact) the same bits
// as the incoming gradient scaled beforehand; otherwise the closed form.
TEST(CkaKernelsReference, BackwardFactorsScaleTheIncomingGradientByGoScale) {
  auto gen = qad::testing::seeded_generator(77);
  const int64_t L = 7;
  auto f64 = torch::dtype(torch::kFloat64);
  auto sums = torch::rand({L, 3}, gen, f64) * 1e5 + 1.0;
  auto cka = torch::rand({L}, gen, f64);
  auto go = torch::full({1}, 0.75f).expand({L});  // an expanded scalar, as the CKA-QAD term's backward passes it
  auto run = [&](const torch::Tensor& g, double scale) {
    kernels::BackwardFactors b{cka, sums.select(1, 0), sums.select(1, 1), sums.select(1, 2), g,
                               torch::full({L}, NAN, torch::kFloat32), torch::full({L}, NAN, torch::kFloat32), scale};
    kernels::backward_factors(b);
    return b;
  };
  auto scaled = run(go, -0.25), prescaled = run(go.to(torch::kFloat64) * -0.25, 1.0);
  EXPECT_TRUE(torch::equal(scaled.beta, prescaled.beta));
  EXPECT_TRUE(torch::equal(scaled.alpha, prescaled.alpha));
  const double w = -0.1 / 28;
  auto b = run(go, w);
  for (int64_t l = 0; l < L; ++l) {
    const double g = 0.75 * w, root = std::sqrt(sums[l][1].item<double>() * sums[l][2].item<double>());
    EXPECT_EQ(b.alpha[l].item<float>(), static_cast<float>(2.0 / root * g)) << l;
    EXPECT_EQ(b.beta[l].item<float>(), static_cast<float>(-2.0 * cka[l].item<double>() / sums[l][0].item<double>() * g))
        << l;
  }
  EXPECT_THROW(run(go, NAN), qad::Error);
}

// The CKA-QAD term: the layers' (1 - CKA) summed in layer order in double, divided by L, and the loss rounding
// weight times that once to its dtype.
TEST(CkaKernelsReference, CkaTermIsTheWeightedMeanOfOneMinusCka) {
  auto f64 = torch::dtype(torch::kFloat64);
  auto cka = torch::tensor({0.9, 0.25, -0.5, 1.0, 0.999, 0.3, 0.7, 0.125}, f64).slice(0, 0, 8, 2);  // stride 2
  for (auto loss_type : {torch::kFloat32, torch::kFloat64}) {
    kernels::CkaTerm t{cka, 0.3, torch::full({}, NAN, f64), torch::full({}, NAN, torch::dtype(loss_type))};
    kernels::cka_term(t);
    const double term = ((((1 - 0.9) + (1 - -0.5)) + (1 - 0.999)) + (1 - 0.7)) / 4;
    EXPECT_EQ(t.term.item<double>(), term);
    const double loss = term * 0.3;
    EXPECT_EQ(t.loss.item<double>(),
              loss_type == torch::kFloat32 ? static_cast<double>(static_cast<float>(loss)) : loss);
  }
  auto term = torch::empty({}, f64);
  kernels::CkaTerm no_layers{torch::empty({0}, f64), 1.0, term, torch::empty({})};
  EXPECT_THROW(kernels::cka_term(no_layers), qad::Error);
  kernels::CkaTerm float_cka{cka.to(torch::kFloat32), 1.0, term, torch::empty({})};
  EXPECT_THROW(kernels::cka_term(float_cka), qad::Error);
  kernels::CkaTerm vector_loss{cka, 1.0, term, torch::empty({1})};
  EXPECT_THROW(kernels::cka_term(vector_loss), qad::Error);
  kernels::CkaTerm nan_weight{cka, NAN, term, torch::empty({})};
  EXPECT_THROW(kernels::cka_term(nan_weight), qad::Error);
}

TEST(CkaKernelsReference, RejectsWrongShapesAndTypes) {
  auto x = torch::randn({2, 5, 8});
  kernels::CentreColumns bad_mean{x, torch::empty({2, 5, 8}), torch::empty({2, 5, 8})};
  EXPECT_THROW(kernels::centre_columns(bad_mean), qad::Error);
  kernels::CentreColumns bad_type{x.to(torch::kFloat64), torch::empty({2, 5, 8}), torch::empty({2, 1, 8})};
  EXPECT_THROW(kernels::centre_columns(bad_type), qad::Error);
  kernels::PairSums bad_out{x, x, torch::empty({2, 3})};
  EXPECT_THROW(kernels::pair_sums(bad_out), qad::Error);
  kernels::PairSums bad_shape{x, torch::randn({2, 8, 5}), torch::empty({2, 3}, torch::kFloat64)};
  EXPECT_THROW(kernels::pair_sums(bad_shape), qad::Error);
}

// GramStrips: the upper block strips stand for the whole symmetric matrix. Integer rows make every product exact, so
// the strips, the whole product and the mirrored matrix agree bit for bit, and the passes give on the strips exactly
// what they give on the whole matrix.
TEST(CkaKernelsReference, GramStripsStandForTheWholeSymmetricMatrix) {
  EXPECT_EQ(kernels::gram_blocks(1024), 4);
  EXPECT_EQ(kernels::gram_blocks(2048), 4);
  EXPECT_EQ(kernels::gram_blocks(512), 2);
  EXPECT_EQ(kernels::gram_blocks(600), 1);  // blocks of 300 rows are not a multiple of 8
  EXPECT_EQ(kernels::gram_blocks(256), 1);
  EXPECT_EQ(kernels::gram_blocks(7), 1);
  auto gen = qad::testing::seeded_generator(78);
  const int64_t L = 2, n = 512, p = 16;
  auto x = torch::randint(-8, 9, {L, n, p}, gen).to(torch::kBFloat16) + 3;
  auto y = torch::randint(-8, 9, {L, n, p}, gen).to(torch::kBFloat16) - 1;
  const auto ks = kernels::gram_strips(x), ls = kernels::gram_strips(y);
  ASSERT_EQ(ks.strips.size(), 2u);
  EXPECT_EQ(ks.block(), 256);
  EXPECT_EQ(ks.n(), n);
  EXPECT_EQ(ks.strips[1].sizes(), (std::vector<int64_t>{L, 256, 256}));
  auto xf = x.to(torch::kFloat32), yf = y.to(torch::kFloat32);
  auto k = xf.bmm(xf.transpose(1, 2)), l = yf.bmm(yf.transpose(1, 2));
  EXPECT_TRUE(torch::equal(kernels::full_gram(ks), k));
  EXPECT_TRUE(torch::equal(kernels::full_gram(ls), l));
  auto f32 = torch::dtype(torch::kFloat32);
  auto sums = [&](const kernels::GramStrips& a, const kernels::GramStrips& b) {
    kernels::GramSums g{a, b, torch::full({L, 3}, NAN, torch::kFloat64), torch::full({L, n}, NAN, f32),
                        torch::full({L, n}, NAN, f32), torch::full({L}, NAN, f32), torch::full({L}, NAN, f32),
                        torch::full({L}, NAN, torch::kFloat64), torch::full({L}, NAN, f32)};
    kernels::centred_gram_sums(g);
    return g;
  };
  const auto on_strips = sums(ks, ls), on_whole = sums(k, l);
  EXPECT_TRUE(torch::equal(on_strips.sums, on_whole.sums));
  EXPECT_TRUE(torch::equal(on_strips.k_row_means, on_whole.k_row_means));
  EXPECT_TRUE(torch::equal(on_strips.cka, on_whole.cka));
  auto beta = torch::randn({L}, gen), alpha = torch::randn({L}, gen);
  for (int64_t e : {0, 8}) {
    auto combine = [&](const kernels::GramStrips& a, const kernels::GramStrips& b, const kernels::GramSums& g) {
      kernels::CombineKernels c{{a, g.k_row_means, g.k_mean}, {b, g.l_row_means, g.l_mean}, beta, alpha,
                                torch::full({L, n, n + e}, NAN, torch::kBFloat16)};
      kernels::combine_kernels(c);
      return c.out;
    };
    EXPECT_TRUE(qad::testing::same_bits(combine(ks, ls, on_strips), combine(k, l, on_whole))) << e;
  }
  // An entry below the block diagonal is its transpose's, whatever the strips hold (here: not a symmetric matrix).
  kernels::GramStrips odd(
      std::vector<torch::Tensor>{torch::randn({L, 256, 512}, gen), torch::randn({L, 256, 256}, gen)});
  auto whole = kernels::full_gram(odd);
  EXPECT_EQ(whole[1][300][10].item<float>(), odd.strips[0][1][10][300].item<float>());
  EXPECT_EQ(whole[1][300][260].item<float>(), odd.strips[1][1][44][4].item<float>());
  EXPECT_EQ(whole[0][10][300].item<float>(), odd.strips[0][0][10][300].item<float>());
  // Strips of another layout, or of the wrong width, are refused with what was expected.
  kernels::GramSums mixed{ks, l, torch::empty({L, 3}, torch::kFloat64), torch::empty({L, n}, f32),
                          torch::empty({L, n}, f32), torch::empty({L}, f32), torch::empty({L}, f32)};
  EXPECT_THROW(kernels::centred_gram_sums(mixed), qad::Error);
  kernels::GramStrips narrow(std::vector<torch::Tensor>{torch::randn({L, 256, 512}), torch::randn({L, 256, 255})});
  try {
    kernels::full_gram(narrow);
    ADD_FAILURE() << "a strip of the wrong width was accepted";
  } catch (const qad::Error& err) {
    const std::string want = "strip 1 of the Gram matrix must be a float32 [layers, 256, 256] tensor with contiguous";
    EXPECT_NE(std::string(err.what()).find(want), std::string::npos) << err.what();
  }
}

// The BF16 path with more tokens than one block (512: two strips) against FP64, value and gradient, within the
// bounds of GramCentringMatchesFp64ValueAndGradient.
TEST(CkaBf16Path, TwoStripsMatchFp64ValueAndGradient) {
  auto gen = qad::testing::seeded_generator(79);
  const int64_t L = 2, n = 512, p = 512;
  ASSERT_EQ(kernels::gram_blocks(n), 2);
  auto t = (torch::randn({L, n, p}, gen) + 20.0).to(torch::kBFloat16);
  auto s = (t.to(torch::kFloat32) + 0.3 * torch::randn({L, n, p}, gen)).to(torch::kBFloat16);
  auto y_bf = s.clone().requires_grad_(true), y_64 = s.to(torch::kFloat64).requires_grad_(true);
  auto c_bf = detail::linear_cka_batched_bf16(t, y_bf);
  auto c_64 = linear_cka_batched(t.to(torch::kFloat64), y_64);
  EXPECT_LE((c_bf.to(torch::kFloat64) - c_64).abs().max().item<double>(), 5e-5);
  c_bf.sum().backward();
  c_64.sum().backward();
  const double scale = y_64.grad().abs().max().item<double>();
  EXPECT_LE((y_bf.grad().to(torch::kFloat64) - y_64.grad()).abs().max().item<double>(), 2e-2 * scale);
}

}  // namespace
}  // namespace qad::loss
