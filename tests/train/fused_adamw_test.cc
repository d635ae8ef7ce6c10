// The fused AdamW's C++ reference against the optimizer's torch-op update (adam_update_), the skip and clipping
// inputs, the gradient norm, and train_step with the device-side step (fused reference on the CPU) against the
// host-side step. CPU, FP32.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/test_util.h"
#include "train/fused_adamw.h"
#include "train/optimizer.h"

namespace qad::train {
namespace {

using qad::testing::same_bits;
using qad::testing::seeded_generator;

struct State {
  torch::Tensor master, m, v, grad;
};

State random_state(uint64_t salt, int64_t n, torch::ScalarType grad_dtype) {
  auto gen = seeded_generator(salt);
  State s;
  s.master = torch::randn({n}, gen);
  s.m = torch::randn({n}, gen) * 1e-3;
  s.v = torch::rand({n}, gen) * 1e-6;
  s.grad = (torch::randn({n}, gen) * 1e-2).to(grad_dtype);
  return s;
}

torch::Tensor f32(double x) { return torch::full({}, x, torch::kFloat32); }

OptimConfig options() {
  OptimConfig o;
  o.weight_decay = 0.1;
  o.beta1 = 0.85;
  o.beta2 = 0.95;
  o.eps = 1e-7;
  return o;
}

// The reference equals the torch-op update to float32 rounding (the torch ops may fuse multiply-adds), measured
// against each buffer's largest element (the moments cancel towards 0 elementwise).
TEST(FusedAdamWTest, ReferenceMatchesTorchOpUpdate) {
  const auto o = options();
  for (auto gdt : {torch::kFloat32, torch::kBFloat16}) {
    auto a = random_state(1, 40000, gdt);  // several chunks
    State b{a.master.clone(), a.m.clone(), a.v.clone(), a.grad};
    for (int64_t t = 1; t <= 3; ++t) {
      const double lr = 1e-3 * static_cast<double>(t);
      fused_adamw_reference_({{a.master, a.m, a.v, a.grad, torch::Tensor(), true}}, adamw_scalars(lr, o, t), f32(1),
                             f32(1));
      b.master.mul_(1.0 - lr * o.weight_decay);
      adam_update_(b.master, b.m, b.v, b.grad.to(torch::kFloat32), lr, o, t);
    }
    auto rel = [](const torch::Tensor& x, const torch::Tensor& y) {  // against the largest element
      return (x - y).abs().max().item<double>() / (y.abs().max().item<double>() + 1e-30);
    };
    EXPECT_LE(rel(a.master, b.master), 1e-6);
    EXPECT_LE(rel(a.m, b.m), 1e-6);
    EXPECT_LE(rel(a.v, b.v), 1e-6);
  }
}

TEST(FusedAdamWTest, WritesTheRoundedModelCopyAndHonoursSkipAndScale) {
  const auto o = options();
  auto a = random_state(2, 1000, torch::kBFloat16);
  auto param = torch::full({1000}, std::nan(""), torch::kBFloat16);  // poisoned: every element must be written
  auto before = a.master.clone();
  auto s = adamw_scalars(1e-3, o, 1);
  fused_adamw_reference_({{a.master, a.m, a.v, a.grad, param, true}}, s, f32(1), f32(0));  // skipped
  EXPECT_TRUE(same_bits(a.master, before));
  EXPECT_TRUE(torch::isnan(param.to(torch::kFloat32)).all().item<bool>());

  // grad_scale equals pre-scaled FP32 gradients, bit for bit.
  auto c = random_state(2, 1000, torch::kBFloat16);
  auto scaled = c.grad.to(torch::kFloat32) * 0.25f;
  fused_adamw_reference_({{a.master, a.m, a.v, a.grad, param, true}}, s, f32(0.25), f32(1));
  fused_adamw_reference_({{c.master, c.m, c.v, scaled, torch::Tensor(), true}}, s, f32(1), f32(1));
  EXPECT_TRUE(same_bits(a.master, c.master));
  EXPECT_TRUE(same_bits(a.v, c.v));
  EXPECT_TRUE(same_bits(param, a.master.to(torch::kBFloat16)));
}

TEST(FusedAdamWTest, GradSquareSumMatchesFp64) {
  auto gen = seeded_generator(3);
  std::vector<torch::Tensor> grads = {torch::randn({70000}, gen), torch::randn({33, 17}, gen).to(torch::kBFloat16),
                                      torch::randn({5}, gen)};
  double want = 0;
  for (const auto& g : grads) want += g.to(torch::kFloat64).pow(2).sum().item<double>();
  EXPECT_NEAR(grad_square_sum(grads).item<double>(), want, 1e-6 * want);
  EXPECT_EQ(grad_square_sum({}).item<double>(), 0.0);
}

TEST(FusedAdamWTest, OptimizerFusedStepMatchesHostStep) {
  auto gen = seeded_generator(4);
  auto w1 = torch::randn({64, 32}, gen), b1 = torch::randn({32}, gen);
  auto w2 = w1.clone(), b2 = b1.clone();
  auto o = options();
  AdamW host({{"w", w1}, {"b", b1}}, o), fused({{"w", w2}, {"b", b2}}, o);
  fused.set_fused(true);
  ASSERT_TRUE(fused.device_step_available());
  ASSERT_FALSE(host.device_step_available());
  for (int t = 0; t < 3; ++t) {
    auto gw = torch::randn({64, 32}, gen), gb = torch::randn({32}, gen);
    w1.mutable_grad() = gw.clone(), b1.mutable_grad() = gb.clone();
    w2.mutable_grad() = gw.clone(), b2.mutable_grad() = gb.clone();
    const double norm = host.grad_norm();
    EXPECT_NEAR(fused.grad_norm_tensor().item<double>(), norm, 1e-6 * norm);
    const double scale = 0.5;  // clipping
    host.scale_grads(scale);
    host.step(1e-3);
    fused.step_on_device(1e-3, f32(scale), f32(1));
  }
  EXPECT_EQ(fused.steps(), 3);
  EXPECT_LE((w1 - w2).abs().max().item<double>(), 1e-6);
  EXPECT_LE((b1 - b2).abs().max().item<double>(), 1e-6);
  const auto version = w2._version();
  fused.step_on_device(1e-3, f32(1), f32(0));  // skipped: nothing moves, the caller cancels the count
  fused.cancel_step();
  EXPECT_EQ(fused.steps(), 3);
  EXPECT_GT(w2._version(), version);  // writes (or not) always move the version: caches re-check
}

}  // namespace
}  // namespace qad::train
