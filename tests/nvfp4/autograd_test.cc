// Straight-through gradients of fake quantization: identity by default, clipped where |x| > amax.
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "nvfp4/fake_quantize_autograd.h"
#include "nvfp4/quantize.h"

namespace {
using namespace qad::nvfp4;

TEST(Nvfp4Autograd, IdentityStraightThrough) {
  auto gen = qad::testing::seeded_generator(3);
  auto x = torch::randn({8, 32}, gen).requires_grad_(true);
  auto w = torch::randn({8, 32}, gen);
  auto a = torch::tensor(1.0f).reshape({});  // most of x lies above: the identity ignores that
  auto y = fake_quantize_ste(x, a);
  EXPECT_TRUE(qad::testing::same_bits(y.detach(), fake_quantize(x.detach(), a)));
  (y * w).sum().backward();
  EXPECT_TRUE(qad::testing::same_bits(x.grad(), w));
}

TEST(Nvfp4Autograd, ClippedStraightThroughZeroesOutside) {
  auto x = torch::tensor({0.5f, -1.5f, 2.0f, -0.1f, 3.0f, -2.0f, 0.0f, 1.0f}).reshape({1, 8}).requires_grad_(true);
  auto a = torch::tensor(2.0f).reshape({});
  fake_quantize_ste(x, a, StraightThrough::kClipped).sum().backward();
  auto expected = torch::tensor({1.0f, 1.0f, 1.0f, 1.0f, 0.0f, 1.0f, 1.0f, 1.0f}).reshape({1, 8});
  EXPECT_TRUE(qad::testing::same_bits(x.grad(), expected));
}

TEST(Nvfp4Autograd, Bf16GradientStaysBf16) {
  auto x = torch::randn({4, 16}).to(torch::kBFloat16).requires_grad_(true);
  fake_quantize_ste(x, compute_amax(x.detach())).sum().backward();
  EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::all(x.grad() == 1).item<bool>());
}

}  // namespace
