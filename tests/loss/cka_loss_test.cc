// The CKA-QAD loss term: value = weight * mean over layers of (1 - CKA) on the masked tokens, layer selection,
// gradients only into the chosen student layers, subsampling, dynamic balancing.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "common/test_util.h"
#include "loss/cka_loss.h"
#include "loss/gradcheck.h"
#include "util/error.h"

namespace {
using namespace qad::loss;
using qad::testing::all_close;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

struct Hidden {
  NamedHidden teacher, student;
  torch::Tensor mask;
};

Hidden make_hidden(uint64_t salt, int64_t b = 2, int64_t t = 9, int64_t h = 5) {
  auto gen = qad::testing::seeded_generator(salt);
  Hidden out;
  for (int l = 0; l < 3; ++l) {
    auto th = torch::randn({b, t, h}, gen, kF64);
    auto sh = th + 0.4 * torch::randn({b, t, h}, gen, kF64);
    out.teacher.emplace_back("layers." + std::to_string(l), th);
    out.student.emplace_back("layers." + std::to_string(l), sh.requires_grad_(true));
  }
  out.mask = torch::rand({b, t}, gen, kF64) > 0.25;
  return out;
}

// CKA of one layer on the masked rows, by boolean indexing (independent of the loss's row selection).
double masked_cka(const torch::Tensor& t, const torch::Tensor& s, const torch::Tensor& mask, CkaEstimator est) {
  auto m = mask.reshape({-1});
  auto x = t.reshape({-1, t.size(2)}).index({m}), y = s.reshape({-1, s.size(2)}).index({m});
  return linear_cka_gram(x.detach(), y.detach(), est).item<double>();
}

TEST(CkaLoss, ValueIsWeightedMeanOfOneMinusCkaOverMaskedTokens) {
  auto hd = make_hidden(1);
  for (auto est : {CkaEstimator::kBiased, CkaEstimator::kDebiased}) {
    CkaLossOptions o;
    o.weight = 0.3;
    o.estimator = est;
    auto r = cka_loss(hd.teacher, hd.student, hd.mask, o);
    double expected = 0;
    ASSERT_EQ(r.per_layer_cka.size(), 3u);
    for (int l = 0; l < 3; ++l) {
      const double c = masked_cka(hd.teacher[l].second, hd.student[l].second, hd.mask, est);
      EXPECT_EQ(r.per_layer_cka[l].first, hd.student[l].first);
      EXPECT_NEAR(r.per_layer_cka[l].second, c, 1e-12);
      expected += (1 - c) / 3;
    }
    EXPECT_NEAR(r.loss.item<double>(), 0.3 * expected, 1e-12);
    EXPECT_GT(expected, 0.01);  // the layers are not identical: the term is not trivially zero
  }
}

TEST(CkaLoss, ChosenLayersOnlyAndGradientsOnlyIntoTheStudent) {
  auto hd = make_hidden(2);
  for (auto& [n, t] : hd.teacher) t.requires_grad_(true);
  CkaLossOptions o;
  o.layers = {"layers.2", "layers.0"};
  o.weight = 2.0;
  auto r = cka_loss(hd.teacher, hd.student, hd.mask, o);
  ASSERT_EQ(r.per_layer_cka.size(), 2u);
  EXPECT_EQ(r.per_layer_cka[0].first, "layers.2");
  r.loss.backward();
  for (auto& [n, t] : hd.teacher) EXPECT_FALSE(t.grad().defined()) << n;
  EXPECT_FALSE(hd.student[1].second.grad().defined());
  // layer 0's gradient: d/ds of weight/2 * (1 - CKA), zero on masked tokens, checked by central differences
  auto s0 = hd.student[0].second.detach();
  auto t0 = hd.teacher[0].second.detach();
  auto mask = hd.mask;
  auto num = qad::testing::numerical_gradient(
      [&](const torch::Tensor& v) {
        auto m = mask.reshape({-1});
        return 1.0 * (1 - linear_cka(t0.reshape({-1, 5}).index({m}), v.reshape({-1, 5}).index({m})));
      },
      s0);
  EXPECT_TRUE(all_close(hd.student[0].second.grad(), num, 1e-6, 1e-9));  // FD noise ~ eps / h
  EXPECT_EQ(hd.student[0].second.grad().index({mask.logical_not()}).abs().max().item<double>(), 0.0);
}

TEST(CkaLoss, MissingLayerNamesTheAvailableOnes) {
  auto hd = make_hidden(3);
  CkaLossOptions o;
  o.layers = {"layers.7"};
  try {
    cka_loss(hd.teacher, hd.student, hd.mask, o);
    FAIL() << "expected qad::Error";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.7"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("layers.0, layers.1, layers.2"), std::string::npos) << e.what();
  }
}

TEST(CkaLoss, SubsamplingDrawsValidTokensFromTheGenerator) {
  auto hd = make_hidden(4, 2, 40, 6);
  CkaLossOptions o;
  o.subsample_tokens = 12;
  auto g1 = torch::make_generator<at::CPUGeneratorImpl>(77);
  auto g2 = torch::make_generator<at::CPUGeneratorImpl>(77);
  auto g3 = torch::make_generator<at::CPUGeneratorImpl>(78);
  auto a = cka_loss(hd.teacher, hd.student, hd.mask, o, &g1);
  auto b = cka_loss(hd.teacher, hd.student, hd.mask, o, &g2);
  auto c = cka_loss(hd.teacher, hd.student, hd.mask, o, &g3);
  EXPECT_EQ(a.loss.item<double>(), b.loss.item<double>());
  EXPECT_NE(a.loss.item<double>(), c.loss.item<double>());
  // the same draw by hand: the first 12 of a Fisher-Yates shuffle of the valid token positions (swap i with
  // i + r mod (n - i), r the generator's next 64-bit draw), in order
  auto g4 = torch::make_generator<at::CPUGeneratorImpl>(77);
  auto valid = hd.mask.reshape({-1}).nonzero().reshape({-1});
  const int64_t n = valid.size(0);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  for (int64_t i = 0; i < 12; ++i) {
    const auto j = i + static_cast<int64_t>(g4.get<at::CPUGeneratorImpl>()->random64() % static_cast<uint64_t>(n - i));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  order.resize(12);
  std::sort(order.begin(), order.end());
  auto pick = valid.index_select(0, torch::tensor(order, torch::kLong));
  const auto& t = hd.teacher[1].second;
  const auto& s = hd.student[1].second;
  const double expected = linear_cka_gram(t.reshape({-1, 6}).index_select(0, pick), s.detach().reshape({-1, 6}).index_select(0, pick),
                                          CkaEstimator::kBiased)
                              .item<double>();
  EXPECT_NEAR(a.per_layer_cka[1].second, expected, 1e-12);
  // asking for more tokens than there are uses them all
  o.subsample_tokens = 1000;
  EXPECT_NEAR(cka_loss(hd.teacher, hd.student, hd.mask, o, &g1).loss.item<double>(),
              cka_loss(hd.teacher, hd.student, hd.mask, {}).loss.item<double>(), 1e-15);
}

TEST(CkaLoss, SubsampledTokensAreDistinctSortedAndUniform) {
  // 6000 draws of 8 of 64 positions: each position's count is Binomial(6000, 1/8) (mean 750, sd 25.6); a bias in
  // the shuffle (e.g. drawing j from [0, n) instead of [i, n)) moves some counts by far more than 5 sd.
  CkaLossOptions o;
  o.subsample_tokens = 8;
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(5);
  std::vector<int64_t> count(64, 0);
  std::vector<int64_t> first_draw;
  for (int draw = 0; draw < 6000; ++draw) {
    auto t = select_cka_tokens(torch::Tensor(), 4, 16, o, &gen, torch::kCPU);
    ASSERT_EQ(t.count, 8);
    auto idx = t.index.contiguous();
    const int64_t* p = idx.data_ptr<int64_t>();
    // Without a mask the slot map comes with the draw: row p[i] -> slot i, every other row -1.
    ASSERT_TRUE(t.slots.defined());
    ASSERT_EQ(t.slots.scalar_type(), torch::kInt);
    ASSERT_EQ(t.slots.numel(), 64);
    auto slots = t.slots.contiguous();
    const int32_t* sp = slots.data_ptr<int32_t>();
    ASSERT_EQ(std::count(sp, sp + 64, -1), 56);
    for (int64_t i = 0; i < 8; ++i) {
      ASSERT_TRUE(p[i] >= 0 && p[i] < 64);
      if (i > 0) {  // ascending, so distinct
        ASSERT_LT(p[i - 1], p[i]);
      }
      ASSERT_EQ(sp[p[i]], i);
      ++count[static_cast<size_t>(p[i])];
    }
    if (draw == 0) first_draw.assign(p, p + 8);
  }
  for (int64_t c : count) EXPECT_NEAR(static_cast<double>(c), 750.0, 5 * 25.6);
  auto again = torch::make_generator<at::CPUGeneratorImpl>(5);
  auto t = select_cka_tokens(torch::Tensor(), 4, 16, o, &again, torch::kCPU);
  EXPECT_EQ(std::vector<int64_t>(t.index.data_ptr<int64_t>(), t.index.data_ptr<int64_t>() + 8), first_draw);
  // With a mask the rows are chosen on the device: no map (the forward builds it from the index).
  auto mask = torch::ones({4, 16}, torch::kLong);
  mask[0][3] = 0;
  auto masked = select_cka_tokens(mask, 4, 16, o, &again, torch::kCPU);
  EXPECT_EQ(masked.count, 8);
  EXPECT_FALSE(masked.slots.defined());
}

TEST(CkaLoss, DynamicBalancingMatchesTheKlMagnitude) {
  auto hd = make_hidden(5);
  CkaLossOptions o;
  o.dynamic_balance = true;
  o.weight = 0.5;
  const double kl = 0.8;
  auto plain = cka_loss(hd.teacher, hd.student, hd.mask, {});
  auto r = cka_loss(hd.teacher, hd.student, hd.mask, o, nullptr, kl);
  const double term = plain.loss.item<double>();
  EXPECT_NEAR(r.balance_factor, kl / term, 1e-12);
  EXPECT_NEAR(r.loss.item<double>(), 0.5 * kl, 1e-12);
  // the factor is a constant: the gradient is the plain one times weight * factor
  r.loss.backward();
  auto g_bal = hd.student[0].second.grad().clone();
  hd.student[0].second.grad().zero_();
  plain.loss.backward();
  EXPECT_TRUE(all_close(g_bal, hd.student[0].second.grad() * (0.5 * kl / term), 1e-12, 1e-15));
  // the cap
  o.balance_max_factor = 2.0;
  EXPECT_EQ(cka_loss(hd.teacher, hd.student, hd.mask, o, nullptr, 1e6).balance_factor, 2.0);
  EXPECT_THROW(cka_loss(hd.teacher, hd.student, hd.mask, o), qad::Error);  // no KL value given
}

TEST(CkaLoss, TooFewTokensThrows) {
  auto hd = make_hidden(6);
  auto mask = torch::zeros({2, 9});
  mask[0][3] = 1;
  EXPECT_THROW(cka_loss(hd.teacher, hd.student, mask, {}), qad::Error);
}

}  // namespace
