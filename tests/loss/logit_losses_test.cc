// KL and cross-entropy: values against LibTorch's unchunked kl_div / cross_entropy in FP64, gradients against
// the closed forms and central differences, chunking, masks, temperature, top-k, BF16 inputs, bad input.
#include <gtest/gtest.h>

#include <limits>

#include "common/test_util.h"
#include "loss/gradcheck.h"
#include "loss/logit_batch.h"
#include "loss/logit_losses.h"
#include "util/error.h"

namespace {
using namespace qad::loss;
using qad::testing::all_close;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

// The unchunked reference: T^2 * mean over valid tokens of KL(softmax(t/T) || softmax(s/T)) via torch::kl_div.
torch::Tensor reference_kl(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& mask, double T) {
  auto log_ps = torch::log_softmax(s / T, -1), log_pt = torch::log_softmax(t / T, -1);
  auto per_token = torch::kl_div(log_ps, log_pt, at::Reduction::None, /*log_target=*/true).sum(-1);
  auto m = mask.to(torch::kFloat64);
  return T * T * (per_token * m).sum() / m.sum();
}

using Batch = LogitBatch;
Batch random_batch(uint64_t salt, int64_t b = 2, int64_t n = 5, int64_t v = 11) {
  return random_logit_batch(salt, b, n, v);
}

TEST(KLDivergence, MatchesUnchunkedReferenceForEveryChunkSize) {
  auto x = random_batch(1);
  const auto ref = reference_kl(x.s, x.t, x.mask, 1.0).item<double>();
  for (int64_t chunk : {1, 2, 3, 4, 7, 10, 4096}) {
    KLOptions o;
    o.chunk_tokens = chunk;
    EXPECT_NEAR(kl_divergence(x.s, x.t, x.mask, o).item<double>(), ref, 1e-13) << "chunk " << chunk;
  }
  // undefined mask = every token
  EXPECT_NEAR(kl_divergence(x.s, x.t, {}).item<double>(),
              reference_kl(x.s, x.t, torch::ones({2, 5}, torch::kBool), 1.0).item<double>(), 1e-13);
}

TEST(KLDivergence, GradientIsTheClosedFormAndOnlyOnValidTokens) {
  auto x = random_batch(2);
  for (double T : {1.0, 2.5}) {
    for (int64_t chunk : {3, 4096}) {
      auto s = x.s.clone().requires_grad_(true);
      auto t = x.t.clone().requires_grad_(true);
      KLOptions o;
      o.temperature = T;
      o.chunk_tokens = chunk;
      (3.0 * kl_divergence(s, t, x.mask, o)).backward();
      const double n = x.mask.sum().item<double>();
      auto closed = T * (torch::softmax(x.s / T, -1) - torch::softmax(x.t / T, -1)) * x.mask.unsqueeze(-1) / n;
      EXPECT_TRUE(all_close(s.grad(), 3.0 * closed, 1e-12, 1e-15)) << "T " << T << " chunk " << chunk;
      EXPECT_FALSE(t.grad().defined()) << "the teacher must get no gradient";
    }
  }
}

TEST(KLDivergence, TemperatureScalesByTSquared) {
  auto x = random_batch(3);
  KLOptions o;
  o.temperature = 3.0;
  o.chunk_tokens = 4;
  const double got = kl_divergence(x.s, x.t, x.mask, o).item<double>();
  EXPECT_NEAR(got, reference_kl(x.s, x.t, x.mask, 3.0).item<double>(), 1e-13);
  // and it is not the T = 1 value (the test would pass by accident otherwise)
  EXPECT_GT(std::abs(got - reference_kl(x.s, x.t, x.mask, 1.0).item<double>()), 1e-3);
}

TEST(KLDivergence, LeavesItsInputsUntouched) {
  auto x = random_batch(14);
  auto s = x.s.clone(), t = x.t.clone();
  KLOptions o;
  o.temperature = 2.0;
  kl_divergence(s, t, {}, o);  // FP64, every token: the chunks are views of the inputs before the copy
  EXPECT_TRUE(qad::testing::same_bits(s, x.s));
  EXPECT_TRUE(qad::testing::same_bits(t, x.t));
}

TEST(KLDivergence, FiniteDifferences) {
  auto x = random_batch(4, 2, 3, 7);
  for (int64_t k : {0, 3}) {
    KLOptions o;
    o.temperature = 1.7;
    o.top_k = k;
    o.chunk_tokens = 2;
    auto s = x.s.clone().requires_grad_(true);
    kl_divergence(s, x.t, x.mask, o).backward();
    auto num = qad::testing::numerical_gradient([&](const torch::Tensor& v) { return kl_divergence(v, x.t, x.mask, o); },
                                                x.s);
    EXPECT_TRUE(all_close(s.grad(), num, 1e-6, 1e-9)) << "top_k " << k;
  }
}

TEST(KLDivergence, TopKRenormalisesBothOverTheTeachersSet) {
  auto x = random_batch(5, 2, 4, 13);
  const int64_t k = 4;
  const double T = 1.5;
  auto idx = std::get<1>(x.t.topk(k, -1));
  auto ts = x.t.gather(-1, idx), ss = x.s.gather(-1, idx);
  const double ref = reference_kl(ss, ts, x.mask, T).item<double>();
  KLOptions o;
  o.top_k = k;
  o.temperature = T;
  o.chunk_tokens = 3;
  auto s = x.s.clone().requires_grad_(true);
  auto loss = kl_divergence(s, x.t, x.mask, o);
  EXPECT_NEAR(loss.item<double>(), ref, 1e-13);
  loss.backward();
  // zero gradient outside the teacher's top-k set
  auto outside = torch::ones_like(x.s, torch::TensorOptions().dtype(torch::kBool)).scatter_(-1, idx, false);
  EXPECT_EQ(s.grad().masked_select(outside).abs().max().item<double>(), 0.0);
  // k >= V is the full KL
  o.top_k = 13;
  EXPECT_NEAR(kl_divergence(x.s, x.t, x.mask, o).item<double>(), reference_kl(x.s, x.t, x.mask, T).item<double>(),
              1e-13);
}

// The teacher's top-k given from outside (a teacher cache stores teacher_top_k's result): a cache of 8 read as
// its first 5 gives the live top-5 KL and gradient bit for bit; bad inputs are refused.
TEST(KLDivergence, TopKFromTheTeachersGivenTopKEqualsTheLiveTopK) {
  auto x = random_batch(7, 3, 4, 13);
  KLOptions o;
  o.top_k = 5;
  o.temperature = 1.3;
  o.chunk_tokens = 3;
  auto s1 = x.s.clone().requires_grad_(true), s2 = x.s.clone().requires_grad_(true);
  auto live = kl_divergence(s1, x.t, x.mask, o);
  auto [top, ids] = teacher_top_k(x.t, 8);
  ASSERT_EQ(top.size(-1), 8);
  EXPECT_TRUE((top.slice(-1, 0, 7) >= top.slice(-1, 1, 8)).all().item<bool>()) << "descending";
  EXPECT_TRUE(qad::testing::same_bits(x.t.gather(-1, ids), top));
  auto cached = kl_divergence_top_k(s2, top.narrow(-1, 0, 5), ids.narrow(-1, 0, 5), x.mask, o);
  EXPECT_TRUE(qad::testing::same_bits(live, cached));
  // the closed form on the teacher's top-5 set
  auto idx5 = std::get<1>(x.t.topk(5, -1));
  EXPECT_NEAR(cached.item<double>(), reference_kl(x.s.gather(-1, idx5), x.t.gather(-1, idx5), x.mask, 1.3).item<double>(),
              1e-13);
  live.backward();
  cached.backward();
  EXPECT_TRUE(qad::testing::same_bits(s1.grad(), s2.grad()));
  EXPECT_THROW(kl_divergence_top_k(x.s, top, ids.to(torch::kInt32), x.mask, o), qad::Error);
  EXPECT_THROW(kl_divergence_top_k(x.s, top.narrow(0, 0, 1), ids.narrow(0, 0, 1), x.mask, o), qad::Error);
  EXPECT_THROW(teacher_top_k(x.t, 0), qad::Error);
}

TEST(KLDivergence, TeacherZeroProbabilitiesGiveAFiniteLoss) {
  auto x = random_batch(6);
  auto t = x.t.clone();
  t.select(-1, 2).fill_(-std::numeric_limits<double>::infinity());  // a masked-out vocabulary entry
  auto s = x.s.clone().requires_grad_(true);
  auto loss = kl_divergence(s, t, x.mask);
  // reference over the other entries: the teacher puts no mass on entry 2
  auto keep = torch::ones({11}, torch::kBool);
  keep[2] = false;
  auto log_ps = torch::log_softmax(x.s, -1).index({torch::indexing::Ellipsis, keep});
  auto log_pt = torch::log_softmax(t, -1).index({torch::indexing::Ellipsis, keep});
  auto per_token = (log_pt.exp() * (log_pt - log_ps)).sum(-1);
  auto m = x.mask.to(torch::kFloat64);
  EXPECT_NEAR(loss.item<double>(), ((per_token * m).sum() / m.sum()).item<double>(), 1e-13);
  loss.backward();
  EXPECT_TRUE(torch::isfinite(s.grad()).all().item<bool>());
}

TEST(KLDivergence, EmptyMaskGivesZeroAndZeroGradient) {
  auto x = random_batch(7);
  auto s = x.s.clone().requires_grad_(true);
  auto loss = kl_divergence(s, x.t, torch::zeros({2, 5}));
  EXPECT_EQ(loss.item<double>(), 0.0);
  loss.backward();
  EXPECT_EQ(s.grad().abs().sum().item<double>(), 0.0);
}

TEST(KLDivergence, Bf16LogitsComputeInFp32AndKeepTheGradientInBf16) {
  auto x = random_batch(8, 2, 6, 300);
  auto s16 = x.s.to(torch::kBFloat16), t16 = x.t.to(torch::kBFloat16);
  auto s = s16.clone().requires_grad_(true);
  KLOptions o;
  o.chunk_tokens = 5;
  auto loss = kl_divergence(s, t16, x.mask, o);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  const double ref = reference_kl(s16.to(torch::kFloat64), t16.to(torch::kFloat64), x.mask, 1.0).item<double>();
  EXPECT_NEAR(loss.item<double>(), ref, 1e-5 * ref);
  loss.backward();
  EXPECT_EQ(s.grad().scalar_type(), torch::kBFloat16);
  const double n = x.mask.sum().item<double>();
  auto closed = (torch::softmax(s16.to(torch::kFloat64), -1) - torch::softmax(t16.to(torch::kFloat64), -1)) *
                x.mask.unsqueeze(-1) / n;
  EXPECT_TRUE(all_close(s.grad(), closed, 1e-2, 1e-6));  // BF16 rounding of the stored gradient
}

TEST(KLDivergence, RejectsMismatchedInputs) {
  auto x = random_batch(9);
  EXPECT_THROW(kl_divergence(x.s, x.t.narrow(2, 0, 10), x.mask), qad::Error);
  EXPECT_THROW(kl_divergence(x.s, x.t, torch::ones({2, 4})), qad::Error);
  KLOptions o;
  o.temperature = 0;
  EXPECT_THROW(kl_divergence(x.s, x.t, x.mask, o), qad::Error);
}

// Cross-entropy ------------------------------------------------------------------------------------------

TEST(CrossEntropy, MatchesLibTorchAndTheClosedFormGradient) {
  auto x = random_batch(10);
  auto gen = qad::testing::seeded_generator(11);
  auto labels = torch::randint(0, 11, {2, 5}, gen, torch::kLong);
  labels[1][2] = -100;
  // LibTorch's reference: masked tokens become ignore_index
  auto ref_labels = labels.masked_fill(x.mask.logical_not(), -100);
  const double ref = torch::nn::functional::cross_entropy(
                         x.s.reshape({-1, 11}), ref_labels.reshape({-1}),
                         torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100))
                         .item<double>();
  for (int64_t chunk : {1, 3, 4096}) {
    auto s = x.s.clone().requires_grad_(true);
    auto loss = cross_entropy(s, labels, x.mask, chunk);
    EXPECT_NEAR(loss.item<double>(), ref, 1e-13) << "chunk " << chunk;
    (0.5 * loss).backward();
    auto valid = (ref_labels != -100);
    const double n = valid.sum().item<double>();
    auto onehot = torch::one_hot(ref_labels.clamp_min(0), 11).to(torch::kFloat64);
    auto closed = (torch::softmax(x.s, -1) - onehot) * valid.unsqueeze(-1) / n;
    EXPECT_TRUE(all_close(s.grad(), 0.5 * closed, 1e-12, 1e-15)) << "chunk " << chunk;
  }
}

TEST(CrossEntropy, FiniteDifferences) {
  auto x = random_batch(12, 2, 3, 6);
  auto labels = torch::tensor({0, 5, 2, 3, 1, 4}, torch::kLong).reshape({2, 3});
  auto s = x.s.clone().requires_grad_(true);
  cross_entropy(s, labels, x.mask, 2).backward();
  auto num = qad::testing::numerical_gradient(
      [&](const torch::Tensor& v) { return cross_entropy(v, labels, x.mask, 2); }, x.s);
  EXPECT_TRUE(all_close(s.grad(), num, 1e-6, 1e-9));
}

TEST(CrossEntropy, OutOfRangeLabelsThrowUnlessIgnored) {
  auto x = random_batch(13);
  auto labels = torch::zeros({2, 5}, torch::kLong);
  labels[0][1] = 11;
  EXPECT_THROW(cross_entropy(x.s, labels, {}), qad::Error);
  labels[0][1] = -3;
  EXPECT_THROW(cross_entropy(x.s, labels, {}), qad::Error);
  auto mask = torch::ones({2, 5});
  mask[0][1] = 0;  // masked out: never read
  EXPECT_NO_THROW(cross_entropy(x.s, labels, mask));
  EXPECT_THROW(cross_entropy(x.s, labels.to(torch::kInt32), {}), qad::Error);
}

}  // namespace
