// The fused lm_head + KL / CE against the same losses on full logits (kl_divergence, cross_entropy of
// linear(hidden, head)) in FP64: values and gradients of the student's hidden state and head, with a mask,
// ignored labels, a temperature, and chunks smaller than the batch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/test_util.h"
#include "loss/fused_head_losses.h"
#include "loss/logit_losses.h"

namespace qad::loss {
namespace {

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

struct Case {
  torch::Tensor hs, ws, ht, wt, labels, mask;
};

Case random_case(uint64_t salt) {
  auto gen = qad::testing::seeded_generator(salt);
  Case c;
  c.hs = torch::randn({2, 7, 6}, gen, kF64);
  c.ws = torch::randn({13, 6}, gen, kF64) * 0.7;
  c.ht = torch::randn({2, 7, 5}, gen, kF64);  // the teacher's hidden size may differ
  c.wt = torch::randn({13, 5}, gen, kF64) * 0.7;
  c.labels = torch::randint(13, {2, 7}, gen, torch::kLong);
  c.labels[0][3] = -100;
  c.mask = torch::rand({2, 7}, gen, kF64) > 0.25;
  c.mask[1][0] = true;
  return c;
}

void expect_near(const torch::Tensor& a, const torch::Tensor& b, double tol, const char* what) {
  ASSERT_TRUE(a.defined() && b.defined()) << what;
  const double err = (a - b).abs().max().item<double>();
  EXPECT_LE(err, tol * (b.abs().max().item<double>() + 1e-30)) << what << ": max error " << err;
}

class FusedHeadTest : public ::testing::TestWithParam<double> {};

TEST_P(FusedHeadTest, EqualsLossesOnFullLogits) {
  const double T = GetParam();
  auto c = random_case(T == 1.0 ? 1 : 2);
  HeadLossOptions o{.kl_weight = 0.8, .ce_weight = 0.3, .temperature = T, .chunk_tokens = 4};
  auto hs = c.hs.clone().requires_grad_(true), ws = c.ws.clone().requires_grad_(true);
  auto r = fused_head_losses(hs, ws, c.ht, c.wt, c.labels, c.mask, o);
  r.loss.backward();

  auto hs_ref = c.hs.clone().requires_grad_(true), ws_ref = c.ws.clone().requires_grad_(true);
  auto s_logits = torch::linear(hs_ref, ws_ref);
  auto t_logits = torch::linear(c.ht, c.wt);
  auto kl = kl_divergence(s_logits, t_logits, c.mask, {.temperature = T, .chunk_tokens = 5});
  auto ce = cross_entropy(s_logits, c.labels, c.mask, 5);
  auto ref = 0.8 * kl + 0.3 * ce;
  ref.backward();

  expect_near(r.kl, kl.detach(), 1e-12, "kl");
  expect_near(r.ce, ce.detach(), 1e-12, "ce");
  expect_near(r.loss.detach(), ref.detach(), 1e-12, "loss");
  expect_near(hs.grad(), hs_ref.grad(), 1e-10, "d loss / d hidden");
  expect_near(ws.grad(), ws_ref.grad(), 1e-10, "d loss / d head");
}

INSTANTIATE_TEST_SUITE_P(Temperatures, FusedHeadTest, ::testing::Values(1.0, 2.0));

TEST(FusedHeadLossTest, CeOnlyWithoutTeacherAndValueOnlyCe) {
  auto c = random_case(3);
  auto hs = c.hs.clone().requires_grad_(true);
  auto r = fused_head_losses(hs, c.ws, {}, {}, c.labels, {}, {.kl_weight = 0, .ce_weight = 1, .chunk_tokens = 3});
  r.loss.backward();
  auto hs_ref = c.hs.clone().requires_grad_(true);
  auto ce = cross_entropy(torch::linear(hs_ref, c.ws), c.labels, {});
  ce.backward();
  EXPECT_FALSE(r.kl.defined());
  expect_near(r.ce, ce.detach(), 1e-12, "ce");
  expect_near(hs.grad(), hs_ref.grad(), 1e-10, "d ce / d hidden");

  // ce_value: the value for the log, no gradient from it.
  auto hs2 = c.hs.clone().requires_grad_(true);
  auto v = fused_head_losses(hs2, c.ws, c.ht, c.wt, c.labels, c.mask, {.kl_weight = 1, .ce_value = true});
  auto kl_only = fused_head_losses(c.hs, c.ws, c.ht, c.wt, c.labels, c.mask, {.kl_weight = 1});
  expect_near(v.loss.detach(), kl_only.loss.detach(), 1e-15, "loss without the CE weight");
  expect_near(v.ce, cross_entropy(torch::linear(c.hs, c.ws), c.labels, c.mask), 1e-12, "logged ce");
}

TEST(FusedHeadLossTest, NoCountedTokenGivesZero) {
  auto c = random_case(4);
  auto hs = c.hs.clone().requires_grad_(true);
  auto r = fused_head_losses(hs, c.ws, c.ht, c.wt, c.labels, torch::zeros({2, 7}), {.kl_weight = 1});
  r.loss.backward();
  EXPECT_EQ(r.loss.item<double>(), 0.0);
  EXPECT_EQ(hs.grad().abs().max().item<double>(), 0.0);
}

}  // namespace
}  // namespace qad::loss
