// CkaAccumulator: full-dataset values equal CKA of all valid tokens concatenated (even with a large common
// offset that the shifted accumulation must survive); minibatch values equal Gram-form HSIC averaged by hand.
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "loss/cka_accumulator.h"
#include "util/error.h"

namespace {
using namespace qad::loss;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

struct Batches {
  std::vector<torch::Tensor> x, y, mask;
};

Batches make_batches(uint64_t salt, double offset) {
  auto gen = qad::testing::seeded_generator(salt);
  Batches b;
  auto proj = torch::randn({6, 4}, gen, kF64);
  for (int i = 0; i < 4; ++i) {
    const int64_t t = 5 + 3 * i;  // batches of different sizes
    auto x = torch::randn({2, t, 6}, gen, kF64) * (1 + i) + offset;
    auto y = x.matmul(proj) + 0.8 * torch::randn({2, t, 4}, gen, kF64) - offset;
    auto mask = torch::rand({2, t}, gen, kF64) > 0.2;
    b.x.push_back(x);
    b.y.push_back(y);
    b.mask.push_back(mask);
  }
  return b;
}

torch::Tensor valid_rows(const torch::Tensor& t, const torch::Tensor& mask) {
  return t.reshape({-1, t.size(-1)}).index({mask.reshape({-1})});
}

TEST(CkaAccumulator, FullDatasetEqualsConcatenatedTokens) {
  for (double offset : {0.0, 1e3}) {
    auto b = make_batches(1, offset);
    CkaAccumulator acc;
    std::vector<torch::Tensor> xs, ys;
    for (size_t i = 0; i < b.x.size(); ++i) {
      acc.add("h", b.x[i], b.y[i], b.mask[i]);
      xs.push_back(valid_rows(b.x[i], b.mask[i]));
      ys.push_back(valid_rows(b.y[i], b.mask[i]));
    }
    // centred before the reference: the Gram form on raw rows 1e3 away from the origin loses ~5 digits to
    // cancellation in FP64 (CKA itself is translation invariant)
    auto x = torch::cat(xs), y = torch::cat(ys);
    x = x - x.mean(0, true);
    y = y - y.mean(0, true);
    auto r = acc.result();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].tokens, x.size(0));
    EXPECT_EQ(r[0].batches, 4);
    const double tol = offset == 0 ? 1e-12 : 1e-9;
    EXPECT_NEAR(r[0].full_biased, linear_cka_gram(x, y, CkaEstimator::kBiased).item<double>(), tol) << offset;
    EXPECT_NEAR(r[0].full_debiased, linear_cka_gram(x, y, CkaEstimator::kDebiased).item<double>(), tol) << offset;
  }
}

TEST(CkaAccumulator, MinibatchAveragesGramFormHsicOverBatches) {
  auto b = make_batches(2, 0.0);
  CkaAccumulator acc(/*full=*/false);
  double sums[2][3] = {};
  for (size_t i = 0; i < b.x.size(); ++i) {
    acc.add("h", b.x[i], b.y[i], b.mask[i]);
    auto x = valid_rows(b.x[i], b.mask[i]), y = valid_rows(b.y[i], b.mask[i]);
    auto k = x.mm(x.t()), l = y.mm(y.t());
    for (int e = 0; e < 2; ++e) {
      auto est = e == 0 ? CkaEstimator::kBiased : CkaEstimator::kDebiased;
      sums[e][0] += hsic_gram(k, l, est).item<double>();
      sums[e][1] += hsic_gram(k, k, est).item<double>();
      sums[e][2] += hsic_gram(l, l, est).item<double>();
    }
  }
  auto r = acc.result();
  EXPECT_NEAR(r[0].minibatch_biased, sums[0][0] / std::sqrt(sums[0][1] * sums[0][2]), 1e-12);
  EXPECT_NEAR(r[0].minibatch_debiased, sums[1][0] / std::sqrt(sums[1][1] * sums[1][2]), 1e-12);
  EXPECT_TRUE(std::isnan(r[0].full_biased));
  // minibatch-averaged differs from the full-dataset value on this data (different estimators)
  CkaAccumulator full;
  for (size_t i = 0; i < b.x.size(); ++i) full.add("h", b.x[i], b.y[i], b.mask[i]);
  EXPECT_GT(std::abs(full.result()[0].full_biased - r[0].minibatch_biased), 1e-4);
}

TEST(CkaAccumulator, SelfIsOneAndTinyBatchesSkipTheDebiasedAverage) {
  auto gen = qad::testing::seeded_generator(3);
  CkaAccumulator acc;
  auto x = torch::randn({1, 20, 5}, gen, kF64);
  acc.add("a", x, x, {});
  acc.add("a", x.narrow(1, 0, 3), x.narrow(1, 0, 3), {});  // 3 tokens: no debiased estimate for this batch
  acc.add("b", x, 2 * x, {});
  auto r = acc.result();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].layer, "a");
  for (const auto& l : r) {
    EXPECT_NEAR(l.full_biased, 1.0, 1e-12) << l.layer;
    EXPECT_NEAR(l.full_debiased, 1.0, 1e-12) << l.layer;
    EXPECT_NEAR(l.minibatch_biased, 1.0, 1e-12) << l.layer;
    EXPECT_NEAR(l.minibatch_debiased, 1.0, 1e-12) << l.layer;
  }
  EXPECT_EQ(r[0].tokens, 23);
  EXPECT_THROW(acc.add("a", x, x.narrow(2, 0, 4), {}), qad::Error);  // hidden size changed
}

}  // namespace
