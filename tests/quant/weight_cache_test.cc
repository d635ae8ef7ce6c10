// The quantized-weight cache of NvFp4LinearQuant: a weight is quantized once and reused until it (or the amax)
// changes; the cached path gives the same values and the same (identity straight-through) gradient as quantizing
// afresh with nvfp4::fake_quantize_ste.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/test_util.h"
#include "nvfp4/fake_quantize_autograd.h"
#include "nvfp4/quantize.h"
#include "quant/linear_quant.h"

namespace qad::quant {
namespace {

using qad::testing::seeded_generator;

struct Fixture {
  torch::Tensor w, x, amax;
  NvFp4LinearQuant hook{"layer.q_proj"};
  explicit Fixture(uint64_t salt) {
    auto gen = seeded_generator(salt);
    w = (torch::randn({48, 64}, gen) * 0.02).set_requires_grad(true);
    x = torch::randn({5, 64}, gen);
    amax = nvfp4::compute_amax(w.detach());
    hook.weight_amax = amax.clone();
    hook.quantize_inputs = false;
  }
};

TEST(WeightCacheTest, QuantizesOnceAndEqualsFreshQuantization) {
  Fixture f(1);
  const auto expected = nvfp4::fake_quantize(f.w.detach(), f.amax);
  for (int i = 0; i < 3; ++i) {
    auto q = f.hook.weight(f.w);
    EXPECT_TRUE(torch::equal(q.detach(), expected)) << "call " << i;
  }
  EXPECT_EQ(f.hook.weight_cache_misses, 1);
  EXPECT_EQ(f.hook.weight_cache_hits, 2);
}

TEST(WeightCacheTest, GradientIsTheStraightThroughOfFreshQuantization) {
  Fixture f(2);
  auto gen = seeded_generator(3);
  auto upstream = torch::randn({5, 48}, gen);
  f.hook.weight(f.w);  // warm the cache: the second call below is served from it
  (torch::linear(f.x, f.hook.weight(f.w)) * upstream).sum().backward();
  ASSERT_EQ(f.hook.weight_cache_hits, 1);
  auto cached_grad = f.w.grad().clone();
  f.w.mutable_grad().reset();
  (torch::linear(f.x, nvfp4::fake_quantize_ste(f.w, f.amax)) * upstream).sum().backward();
  EXPECT_TRUE(torch::equal(cached_grad, f.w.grad()));
  EXPECT_GT(cached_grad.abs().sum().item<double>(), 0.0);
}

TEST(WeightCacheTest, InPlaceUpdateOrNewAmaxInvalidates) {
  Fixture f(4);
  auto before = f.hook.weight(f.w).detach().clone();
  {
    torch::NoGradGuard ng;
    f.w.add_(0.01);  // what the optimizer's copy into the parameter does: same tensor, new version
  }
  auto after = f.hook.weight(f.w).detach();
  EXPECT_EQ(f.hook.weight_cache_misses, 2);
  EXPECT_TRUE(torch::equal(after, nvfp4::fake_quantize(f.w.detach(), f.amax)));
  EXPECT_FALSE(torch::equal(after, before));
  f.hook.weight_amax = f.amax * 2;  // a new amax tensor
  auto rescaled = f.hook.weight(f.w).detach();
  EXPECT_EQ(f.hook.weight_cache_misses, 3);
  EXPECT_TRUE(torch::equal(rescaled, nvfp4::fake_quantize(f.w.detach(), f.amax * 2)));
  f.hook.weight_amax.mul_(0.5);  // the same amax tensor written in place
  f.hook.weight(f.w);
  EXPECT_EQ(f.hook.weight_cache_misses, 4);
}

TEST(WeightCacheTest, ClippedStraightThroughBypassesTheCache) {
  Fixture f(5);
  f.hook.ste = nvfp4::StraightThrough::kClipped;
  f.hook.weight(f.w);
  f.hook.weight(f.w);
  EXPECT_EQ(f.hook.weight_cache_misses + f.hook.weight_cache_hits, 0);
}

}  // namespace
}  // namespace qad::quant
