// Linear CKA: the feature form against the Gram form (and Google's U-centring formulation, written out here
// independently), HSIC scaling, invariances, the biased/debiased contrast, and gradients against central
// differences and against autograd through the Gram form. FP64 on the CPU.
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "loss/cka.h"
#include "loss/gradcheck.h"
#include "util/error.h"

namespace {
using namespace qad::loss;
using qad::testing::all_close;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);
constexpr CkaEstimator kBoth[] = {CkaEstimator::kBiased, CkaEstimator::kDebiased};
const char* name(CkaEstimator e) { return e == CkaEstimator::kBiased ? "biased" : "debiased"; }

// Correlated features with a non-zero mean: y mixes a linear image of x with noise.
std::pair<torch::Tensor, torch::Tensor> correlated(uint64_t salt, int64_t n, int64_t p1, int64_t p2, double noise = 0.7) {
  auto gen = qad::testing::seeded_generator(salt);
  auto x = torch::randn({n, p1}, gen, kF64) + 0.5;
  auto y = x.mm(torch::randn({p1, p2}, gen, kF64)) + noise * torch::randn({n, p2}, gen, kF64) - 2.0;
  return {x, y};
}

// Google representation_similarity's Gram-form CKA (center_gram with unbiased=True is U-centring), written
// from its definition, independent of hsic_gram.
double google_gram_cka(const torch::Tensor& x, const torch::Tensor& y, bool debiased) {
  auto center = [&](torch::Tensor g) {
    const double n = g.size(0);
    if (debiased) {
      g = g.clone();
      g.fill_diagonal_(0);
      auto means = g.sum(0) / (n - 2);
      means = means - means.sum() / (2 * (n - 1));
      g = g - means.unsqueeze(1) - means.unsqueeze(0);
      g.fill_diagonal_(0);
      return g;
    }
    auto means = g.mean(0);
    means = means - means.mean() / 2;
    return g - means.unsqueeze(1) - means.unsqueeze(0);
  };
  auto k = center(x.mm(x.t())), l = center(y.mm(y.t()));
  return ((k * l).sum() / (k.norm() * l.norm())).item<double>();
}

TEST(LinearCka, FeatureFormEqualsGramForm) {
  struct Shape {
    int64_t n, p1, p2;
  };
  for (auto [n, p1, p2] : {Shape{8, 3, 5}, Shape{40, 12, 7}, Shape{6, 10, 9}, Shape{100, 4, 4}}) {
    auto [x, y] = correlated(n + p1, n, p1, p2);
    for (auto est : kBoth) {
      const double feature = linear_cka(x, y, est).item<double>();
      const double gram = linear_cka_gram(x, y, est).item<double>();
      EXPECT_NEAR(feature, gram, 1e-10) << name(est) << " n=" << n << " p1=" << p1 << " p2=" << p2;
      EXPECT_NEAR(gram, google_gram_cka(x, y, est == CkaEstimator::kDebiased), 1e-10) << name(est);
    }
  }
}

TEST(LinearCka, HsicTermsHaveTheEstimatorsScale) {
  auto [x, y] = correlated(2, 30, 6, 5);
  const double n = 30;
  auto k = x.mm(x.t()), l = y.mm(y.t());
  // biased: tr(K H L H) / (n-1)^2 with an explicit centring matrix
  auto h = torch::eye(30, kF64) - 1.0 / n;
  const double biased = (k.mm(h).mm(l).mm(h)).trace().item<double>() / ((n - 1) * (n - 1));
  auto hb = hsic_terms(x, y, CkaEstimator::kBiased);
  EXPECT_NEAR(hb.xy, biased, 1e-10 * std::abs(biased));
  EXPECT_NEAR(hsic_gram(k, l, CkaEstimator::kBiased).item<double>(), biased, 1e-10 * std::abs(biased));
  // debiased: Song et al.'s unbiased HSIC, summed over i != j != q != r tuples by brute force on a small n
  auto [xs, ys] = correlated(3, 7, 3, 2);
  auto ks = xs.mm(xs.t()), ls = ys.mm(ys.t());
  const int m = 7;
  // the U-statistic: mean over distinct (i,j,q,r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq
  double u = 0;
  auto K = ks.accessor<double, 2>();
  auto L = ls.accessor<double, 2>();
  int64_t tuples = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j)
      for (int q = 0; q < m; ++q)
        for (int r = 0; r < m; ++r) {
          if (i == j || i == q || i == r || j == q || j == r || q == r) continue;
          u += K[i][j] * L[i][j] + K[i][j] * L[q][r] - 2 * K[i][j] * L[i][q];
          ++tuples;
        }
  u /= static_cast<double>(tuples);
  auto hd = hsic_terms(xs, ys, CkaEstimator::kDebiased);
  EXPECT_NEAR(hd.xy, u, 1e-10 * std::abs(u));
  EXPECT_NEAR(hsic_gram(ks, ls, CkaEstimator::kDebiased).item<double>(), u, 1e-10 * std::abs(u));
  EXPECT_NEAR(hd.cka(), linear_cka(xs, ys, CkaEstimator::kDebiased).item<double>(), 1e-12);
}

TEST(LinearCka, InvariantUnderOrthogonalRotationScalingAndTranslation) {
  auto gen = qad::testing::seeded_generator(4);
  auto x = torch::randn({64, 16}, gen, kF64);
  auto q = std::get<0>(torch::linalg_qr(torch::randn({16, 16}, gen, kF64)));
  auto y = 3.7 * x.mm(q) + torch::randn({1, 16}, gen, kF64) * 5;
  for (auto est : kBoth) {
    EXPECT_NEAR(linear_cka(x, x, est).item<double>(), 1.0, 1e-12) << name(est);
    EXPECT_NEAR(linear_cka(x, y, est).item<double>(), 1.0, 1e-12) << name(est);
  }
  // but not under a non-isotropic scaling (the test would be vacuous if CKA were always 1)
  auto z = x * torch::linspace(0.1, 10, 16, kF64);
  EXPECT_LT(linear_cka(x, z, CkaEstimator::kBiased).item<double>(), 0.9);
}

TEST(LinearCka, IndependentFeaturesDebiasedNearZeroBiasedNot) {
  auto gen = qad::testing::seeded_generator(5);
  const int64_t n = 400, p = 32;  // debiased std ~ sqrt(2) / n = 0.0035
  auto x = torch::randn({n, p}, gen, kF64), y = torch::randn({n, p}, gen, kF64);
  const double biased = linear_cka(x, y, CkaEstimator::kBiased).item<double>();
  const double debiased = linear_cka(x, y, CkaEstimator::kDebiased).item<double>();
  RecordProperty("biased", std::to_string(biased));
  RecordProperty("debiased", std::to_string(debiased));
  EXPECT_LT(std::abs(debiased), 0.02);
  EXPECT_GT(biased, 0.05);  // about p / (n + p) = 0.074 for Gaussian features: the small-n bias
  EXPECT_GT(std::abs(biased), 5 * std::abs(debiased));
}

TEST(LinearCka, GradientsMatchCentralDifferences) {
  auto [x0, y0] = correlated(6, 9, 4, 3, 1.5);
  for (auto est : kBoth) {
    auto x = x0.clone().requires_grad_(true), y = y0.clone().requires_grad_(true);
    (2.5 * linear_cka(x, y, est)).backward();
    auto gx = qad::testing::numerical_gradient([&](const torch::Tensor& v) { return 2.5 * linear_cka(v, y0, est); }, x0);
    auto gy = qad::testing::numerical_gradient([&](const torch::Tensor& v) { return 2.5 * linear_cka(x0, v, est); }, y0);
    EXPECT_TRUE(all_close(x.grad(), gx, 1e-6, 1e-9)) << name(est) << " d/dx";
    EXPECT_TRUE(all_close(y.grad(), gy, 1e-6, 1e-9)) << name(est) << " d/dy";
    // the gradient is not trivially zero
    EXPECT_GT(y.grad().abs().max().item<double>(), 1e-4);
  }
}

TEST(LinearCka, GradientsMatchCentralDifferencesWithFewerTokensThanFeatures) {
  // n = 7 < p: linear_cka works on the n x n kernels (the Gram-form path of the analytic backward).
  auto [x0, y0] = correlated(16, 7, 11, 9, 1.5);
  for (auto est : kBoth) {
    auto x = x0.clone().requires_grad_(true), y = y0.clone().requires_grad_(true);
    (1.5 * linear_cka(x, y, est)).backward();
    auto gx = qad::testing::numerical_gradient([&](const torch::Tensor& v) { return 1.5 * linear_cka(v, y0, est); }, x0);
    auto gy = qad::testing::numerical_gradient([&](const torch::Tensor& v) { return 1.5 * linear_cka(x0, v, est); }, y0);
    EXPECT_TRUE(all_close(x.grad(), gx, 1e-6, 1e-9)) << name(est) << " d/dx";
    EXPECT_TRUE(all_close(y.grad(), gy, 1e-6, 1e-9)) << name(est) << " d/dy";
    EXPECT_GT(y.grad().abs().max().item<double>(), 1e-4);
  }
}

TEST(LinearCkaBatched, EqualsOneCallPerLayerInValueAndGradient) {
  struct Shape {
    int64_t n, p1, p2;
  };
  // Both regimes: more tokens than features (p x p products) and fewer (n x n kernels).
  for (auto [n, p1, p2] : {Shape{30, 6, 5}, Shape{9, 14, 12}}) {
    std::vector<torch::Tensor> xs, ys;
    for (int64_t l = 0; l < 4; ++l) {
      auto [x, y] = correlated(100 + l * 7 + n, n, p1, p2, 0.3 + 0.4 * l);
      xs.push_back(x);
      ys.push_back(y);
    }
    for (auto est : kBoth) {
      auto xb = torch::stack(xs).requires_grad_(true), yb = torch::stack(ys).requires_grad_(true);
      auto weights = torch::tensor({0.5, -1.0, 2.0, 1.5}, kF64);
      auto batched = linear_cka_batched(xb, yb, est);
      ASSERT_EQ(batched.sizes(), (std::vector<int64_t>{4}));
      (batched * weights).sum().backward();
      for (int64_t l = 0; l < 4; ++l) {
        auto x = xs[l].clone().requires_grad_(true), y = ys[l].clone().requires_grad_(true);
        auto one = linear_cka(x, y, est);
        (one * weights[l]).backward();
        EXPECT_NEAR(batched[l].item<double>(), one.item<double>(), 1e-12) << name(est) << " layer " << l << " n=" << n;
        EXPECT_NEAR(one.item<double>(), linear_cka_gram(xs[l], ys[l], est).item<double>(), 1e-10) << name(est);
        EXPECT_TRUE(all_close(xb.grad()[l], x.grad(), 1e-10, 1e-13)) << name(est) << " d/dx layer " << l;
        EXPECT_TRUE(all_close(yb.grad()[l], y.grad(), 1e-10, 1e-13)) << name(est) << " d/dy layer " << l;
      }
    }
  }
}

// The CKA-QAD term as one operation against the composition the loss built from the values before, weight *
// mean(1 - CKA): the same value, the layers' FP64 values that the composition's ones round, and the same gradient
// into both sides, both estimators, both regimes, FP64 and FP32.
TEST(CkaTermBatched, IsTheWeightedMeanOfOneMinusTheValuesInValueAndGradient) {
  struct Shape {
    int64_t n, p1, p2;
  };
  for (auto [n, p1, p2] : {Shape{30, 6, 5}, Shape{9, 14, 12}}) {
    std::vector<torch::Tensor> xs, ys;
    for (int64_t l = 0; l < 3; ++l) {
      auto [x, y] = correlated(300 + l * 5 + n, n, p1, p2, 0.2 + 0.5 * l);
      xs.push_back(x);
      ys.push_back(y);
    }
    for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
      const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-6;
      for (auto est : kBoth) {
        const std::string what = std::string(name(est)) + " " + c10::toString(dtype) + " n=" + std::to_string(n);
        const double weight = 0.37;
        auto x1 = torch::stack(xs).to(dtype).requires_grad_(true), y1 = torch::stack(ys).to(dtype).requires_grad_(true);
        auto x2 = x1.detach().clone().requires_grad_(true), y2 = y1.detach().clone().requires_grad_(true);
        auto t = cka_term_batched(x1, y1, weight, est);
        auto values = linear_cka_batched(x2, y2, est);
        auto composed = (1 - values).mean() * weight;
        EXPECT_EQ(t.loss.dim(), 0) << what;
        EXPECT_EQ(t.loss.scalar_type(), dtype) << what;
        EXPECT_TRUE(t.loss.requires_grad()) << what;
        EXPECT_FALSE(t.term.requires_grad() || t.per_layer.requires_grad()) << what;
        ASSERT_EQ(t.per_layer.scalar_type(), torch::kFloat64) << what;
        EXPECT_TRUE(torch::equal(t.per_layer.to(dtype), values.detach())) << what;
        const double expect_term = (1 - t.per_layer).mean().item<double>();
        EXPECT_EQ(t.term.item<double>(), expect_term) << what;
        EXPECT_NEAR(t.loss.item<double>(), composed.item<double>(), tol) << what;
        EXPECT_EQ(t.loss.item<double>(), static_cast<double>(
                                             dtype == torch::kFloat32
                                                 ? static_cast<double>(static_cast<float>(expect_term * weight))
                                                 : expect_term * weight))
            << what;
        (t.loss * 3.0).backward();
        (composed * 3.0).backward();
        EXPECT_TRUE(all_close(x1.grad(), x2.grad(), 10 * tol, tol * 1e-2)) << what << " d/dx";
        EXPECT_TRUE(all_close(y1.grad(), y2.grad(), 10 * tol, tol * 1e-2)) << what << " d/dy";
        EXPECT_GT(y1.grad().abs().max().item<double>(), 0.0) << what;
      }
    }
  }
  auto [x, y] = correlated(5, 12, 4, 4);
  EXPECT_THROW(cka_term_batched(x.unsqueeze(0), y.unsqueeze(0), NAN), qad::Error);
}

TEST(LinearCkaBatched, RejectsMismatchedLayers) {
  auto x = torch::randn({3, 8, 4}, kF64), y = torch::randn({2, 8, 4}, kF64);
  EXPECT_THROW(linear_cka_batched(x, y), qad::Error);
  EXPECT_THROW(linear_cka_batched(x[0], y[0]), qad::Error);
}

TEST(LinearCka, GradientsMatchAutogradThroughTheGramForm) {
  auto [x0, y0] = correlated(7, 24, 6, 5, 1.0);
  for (auto est : kBoth) {
    auto y = y0.clone().requires_grad_(true);
    linear_cka(x0, y, est).backward();
    auto yg = y0.clone().requires_grad_(true);
    linear_cka_gram(x0, yg, est).backward();
    EXPECT_TRUE(all_close(y.grad(), yg.grad(), 1e-9, 1e-13)) << name(est);
  }
}

TEST(LinearCka, OnlyInputsThatRequireGradGetOne) {
  auto [x0, y0] = correlated(8, 12, 3, 3);
  auto x = x0.clone().requires_grad_(true);
  auto y = y0.clone();
  auto yt = y0.clone().requires_grad_(true);
  (linear_cka(x, y) + linear_cka(x0, yt)).backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_TRUE(yt.grad().defined());
}

TEST(LinearCka, LowPrecisionInputsAccumulateInFp32) {
  auto [x, y] = correlated(9, 512, 64, 48);
  auto x16 = x.to(torch::kBFloat16), y16 = y.to(torch::kBFloat16);
  for (auto est : kBoth) {
    const double ref = linear_cka(x16.to(torch::kFloat64), y16.to(torch::kFloat64), est).item<double>();
    auto got = linear_cka(x16, y16, est);
    EXPECT_EQ(got.scalar_type(), torch::kFloat32);
    EXPECT_NEAR(got.item<double>(), ref, 1e-5) << name(est);
    EXPECT_NEAR(linear_cka(x16, x16, est).item<double>(), 1.0, 1e-6) << name(est);
  }
  auto y16g = y16.clone().requires_grad_(true);
  linear_cka(x16, y16g).backward();
  EXPECT_EQ(y16g.grad().scalar_type(), torch::kBFloat16);
}

TEST(LinearCka, RejectsBadShapes) {
  auto x = torch::randn({5, 3}, kF64);
  EXPECT_THROW(linear_cka(x, torch::randn({4, 3}, kF64)), qad::Error);
  EXPECT_THROW(linear_cka(x.narrow(0, 0, 3), x.narrow(0, 0, 3), CkaEstimator::kDebiased), qad::Error);
  EXPECT_THROW(linear_cka(x.unsqueeze(0), x.unsqueeze(0)), qad::Error);
}

}  // namespace
