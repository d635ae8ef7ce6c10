// Hand-computed cases from ../shared/docs/NVFP4.md and the edge-case decisions in docs/nvfp4.md.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/test_util.h"
#include "nvfp4/quantize.h"
#include "nvfp4/scales.h"
#include "util/error.h"

namespace {
using namespace qad::nvfp4;
using qad::testing::same_bits;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

torch::Tensor f32(std::vector<float> v) { return torch::tensor(v, torch::kFloat32); }
torch::Tensor scalar(float v) { return torch::tensor(v, torch::kFloat32).reshape({}); }

TEST(Nvfp4Spec, E2M1TiesGoToEven) {
  const std::vector<std::pair<float, uint8_t>> cases = {
      {0.25f, 0}, {0.75f, 2}, {1.25f, 2}, {1.75f, 4}, {2.5f, 4}, {3.5f, 6}, {5.0f, 6},
      {0.2501f, 1}, {0.7499f, 1}, {5.0001f, 7}, {6.5f, 7}, {1e30f, 7}, {-0.75f, 8 | 2}, {-5.0f, 8 | 6}};
  for (auto [x, code] : cases) EXPECT_EQ(e2m1_encode(x), code) << "x = " << x;
}

TEST(Nvfp4Spec, E2M1SaturatesAndKeepsSignOfZero) {
  EXPECT_EQ(e2m1_encode(7.0f), 7);
  EXPECT_EQ(e2m1_encode(-7.0f), 15);
  EXPECT_EQ(e2m1_encode(kInf), 7);
  EXPECT_EQ(e2m1_encode(-kInf), 15);
  EXPECT_EQ(e2m1_encode(-0.0f), 8);
  EXPECT_EQ(e2m1_encode(-0.1f), 8);  // rounds to zero, keeps the sign bit
  EXPECT_EQ(e2m1_encode(kNaN), 7);    // as CUDA's satfinite conversion
}

TEST(Nvfp4Spec, E4M3SaturatesAt448AndRoundsToEven) {
  EXPECT_EQ(e4m3_encode(448.0f), 0x7E);
  EXPECT_EQ(e4m3_encode(449.0f), 0x7E);
  EXPECT_EQ(e4m3_encode(464.0f), 0x7E);  // halfway to the next (non-existent) step
  EXPECT_EQ(e4m3_encode(1e9f), 0x7E);
  EXPECT_EQ(e4m3_encode(kInf), 0x7E);
  EXPECT_EQ(e4m3_encode(-kInf), 0xFE);
  EXPECT_EQ(e4m3_encode(1.0f), 0x38);
  EXPECT_EQ(e4m3_encode(1.0625f), 0x38);  // tie between 1 and 1.125 -> even mantissa (1.0)
  EXPECT_EQ(e4m3_encode(1.1875f), 0x3A);  // tie between 1.125 and 1.25 -> 1.25 (even)
  EXPECT_EQ(e4m3_encode(0.001953125f), 0x01);          // 2^-9, the smallest subnormal
  EXPECT_EQ(e4m3_encode(0.0009765625f), 0x00);         // 2^-10: tie between 0 and 2^-9 -> 0
  EXPECT_EQ(e4m3_encode(3 * 0.001953125f), 0x03);      // a subnormal
  EXPECT_EQ(e4m3_encode(7.5f * 0.001953125f), 0x08);   // rounds up into the smallest normal 2^-6
  EXPECT_FLOAT_EQ(e4m3_decode(0x7E), 448.0f);
  EXPECT_TRUE(std::isnan(e4m3_decode(0x7F)));
}

TEST(Nvfp4Spec, BlockScaleRules) {
  const float sg = global_decode_scale(2688.0f);  // s_g = 1
  ASSERT_EQ(sg, 1.0f);
  EXPECT_EQ(block_scale_code(0.0f, sg), kE4M3One);          // all-zero block: stored as 1.0
  EXPECT_EQ(block_scale_code(6.0f, sg), 0x38);              // 6 / (6*1) = 1
  EXPECT_EQ(block_scale_code(1e-6f, sg), 0x01);             // clamped up to 2^-9
  EXPECT_EQ(block_scale_code(3 * 6 * 0.001953125f, sg), 0x03);  // subnormal scale 3 * 2^-9
  EXPECT_EQ(block_scale_code(6.0f * 500.0f, sg), 0x7E);     // clamped to 448
  EXPECT_EQ(block_scale_code(kInf, sg), 0x7E);
  EXPECT_EQ(block_scale_code(kNaN, sg), 0x7F);
  EXPECT_EQ(block_scale_code(1.0f, 0.0f), 0x7E);            // A = 0 but the block is not: 448
}

TEST(Nvfp4Spec, PackOrderLowNibbleIsEvenElement) {
  // amax 2688 gives s_g = 1; the block amax 6 gives s_b = 1, so elements encode as themselves.
  auto x = f32({0.5f, -1.0f, 6.0f, -6.0f, 0.25f, 0.75f, 3.0f, -4.0f, 0, 0, 0, 0, 0, 0, 1.5f, 2.0f}).reshape({1, 16});
  auto q = quantize(x, scalar(2688.0f));
  ASSERT_EQ(q.packed.sizes(), torch::IntArrayRef({1, 8}));
  ASSERT_EQ(q.block_scales.sizes(), torch::IntArrayRef({1, 1}));
  const std::vector<int> expected = {0x1 | (0xA << 4), 0x7 | (0xF << 4), 0x0 | (0x2 << 4), 0x5 | (0xE << 4),
                                     0, 0, 0, 0x3 | (0x4 << 4)};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(q.packed[0][i].item<int>(), expected[i]) << "byte " << i;
  EXPECT_EQ(q.block_scales[0][0].item<int>(), 0x38);
  EXPECT_EQ(q.global_scale.item<float>(), 1.0f);
}

TEST(Nvfp4Spec, WorkedExampleWithRealScales) {
  // A = 10: s_g = 10/2688. Block amax 3: s = 3 / (6 s_g) = 134.4 = 2^7 * 1.05; E4M3 steps there are 16
  // (128, 144), so s_b = 128 (code 0x70).
  const float sg = 10.0f / 2688.0f;
  EXPECT_EQ(block_scale_code(3.0f, sg), 0x70);  // 128 = 2^7: biased exponent 14, mantissa 0
  auto x = f32({3.0f, -1.0f, 0.3f, 2.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}).reshape({1, 16});
  auto y = fake_quantize(x, scalar(10.0f));
  // x / (128 s_g) = x * 2.1: 3 -> 6.3 -> 6; -1 -> -2.1 -> -2; 0.3 -> 0.63 -> 0.5; 2 -> 4.2 -> 4.
  const float unit = 128.0f * sg;
  EXPECT_EQ(y[0][0].item<float>(), (6.0f * 128.0f) * sg);
  EXPECT_EQ(y[0][1].item<float>(), (-2.0f * 128.0f) * sg);
  EXPECT_EQ(y[0][2].item<float>(), (0.5f * 128.0f) * sg);
  EXPECT_EQ(y[0][3].item<float>(), (4.0f * 128.0f) * sg);
  EXPECT_NEAR(y[0][0].item<float>(), 6 * unit, 1e-6);
}

TEST(Nvfp4Spec, AmaxZeroTensorStaysZero) {
  auto x = torch::zeros({3, 32});
  x[1][5] = -0.0f;
  auto a = compute_amax(x);
  EXPECT_EQ(a.item<float>(), 0.0f);
  auto q = quantize(x);
  EXPECT_EQ(q.global_scale.item<float>(), 0.0f);
  EXPECT_TRUE((q.block_scales == kE4M3One).all().item<bool>());
  auto y = fake_quantize(x, a);
  EXPECT_TRUE(same_bits(y, x));  // zeros, with the sign of -0 kept
  EXPECT_EQ(q.packed[1][2].item<int>(), 0x8 << 4);  // element 5 = high nibble of byte 2: code 8 (-0)
  EXPECT_TRUE(same_bits(dequantize(q), x));
}

TEST(Nvfp4Spec, ZeroBlockInsideNonZeroTensor) {
  auto x = torch::zeros({1, 32});
  x[0][20] = 5.0f;  // second block non-zero, first block all zero
  auto q = quantize(x);
  EXPECT_EQ(q.block_scales[0][0].item<int>(), kE4M3One);
  auto y = fake_quantize(x, compute_amax(x));
  EXPECT_FLOAT_EQ(y[0][20].item<float>(), 5.0f);  // the block amax maps onto 6 * 448 * s_g = A
  EXPECT_FLOAT_EQ(y.abs().sum().item<float>(), y[0][20].item<float>());
}

TEST(Nvfp4Spec, TinyBlockGetsClampedScale) {
  // A = 1 (s_g = 1/2688), a block amax of 1e-6 wants s = 1e-6 * 448 = 4.5e-4 < 2^-9: clamped to 2^-9, so
  // the block's elements (x / (2^-9 s_g) = 1e-6 * 2688 * 512 = 1.376) encode as 1.5 -> 1.5*2^-9*s_g.
  auto x = torch::zeros({1, 32});
  x[0][0] = 1.0f;
  x[0][16] = 1e-6f;
  auto q = quantize(x);
  EXPECT_EQ(q.block_scales[0][1].item<int>(), 0x01);
  auto y = fake_quantize(x, compute_amax(x));
  const float sg = 1.0f / 2688.0f;
  EXPECT_EQ(y[0][16].item<float>(), (1.5f * 0.001953125f) * sg);
}

TEST(Nvfp4Spec, ActivationAboveCalibratedAmaxSaturates) {
  // Calibrated amax 1 but a live block with amax 100: scale clamps to 448, elements saturate at 6.
  auto x = torch::full({1, 16}, 100.0f);
  auto y = fake_quantize(x, scalar(1.0f));
  EXPECT_FLOAT_EQ(y[0][0].item<float>(), 1.0f);  // 6 * 448 * (1/2688) = 1
}

TEST(Nvfp4Spec, NonFiniteBlocksBecomeNaNOthersUntouched) {
  auto x = torch::randn({2, 48});
  auto clean = fake_quantize(x, scalar(4.0f));
  x[0][3] = kNaN;
  x[1][40] = kInf;
  auto y = fake_quantize(x, scalar(4.0f));
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::isnan(y.index({0, Slice(0, 16)})).all().item<bool>());
  EXPECT_TRUE(torch::isnan(y.index({1, Slice(32, 48)})).all().item<bool>());
  EXPECT_TRUE(same_bits(y.index({0, Slice(16, 48)}), clean.index({0, Slice(16, 48)})));
  EXPECT_TRUE(same_bits(y.index({1, Slice(0, 32)}), clean.index({1, Slice(0, 32)})));
  EXPECT_TRUE(std::isnan(compute_amax(x).item<float>()));
  EXPECT_THROW(quantize(x), qad::Error);
  auto z = torch::ones({4, 16});
  z[2][2] = -kInf;
  EXPECT_TRUE(std::isinf(compute_amax(z).item<float>()));
  EXPECT_TRUE(torch::isnan(fake_quantize(z, compute_amax(z))).all().item<bool>());  // infinite global scale
}

TEST(Nvfp4Spec, PartialLastBlockHasItsOwnScale) {
  // K = 172 as in stories260K's MLP down projection: 10 full blocks and one of 12.
  auto gen = qad::testing::seeded_generator();
  auto x = torch::randn({5, 172}, gen);
  x.index_put_({torch::indexing::Slice(), torch::indexing::Slice(160, 172)}, 0.01);
  auto q = quantize(x);
  ASSERT_EQ(q.packed.sizes(), torch::IntArrayRef({5, 86}));
  ASSERT_EQ(q.block_scales.sizes(), torch::IntArrayRef({5, 11}));
  const float sg = q.global_scale.item<float>();
  EXPECT_EQ(q.block_scales[0][10].item<int>(), block_scale_code(0.01f, sg));
  auto y = fake_quantize(x, compute_amax(x));
  // The last 12 elements are all 0.01 = their block amax, which maps onto 6 within E4M3 rounding.
  auto tail = y.index({torch::indexing::Slice(), torch::indexing::Slice(160, 172)});
  EXPECT_TRUE(torch::allclose(tail, torch::full_like(tail, 0.01), 0.07, 0));
  EXPECT_TRUE(same_bits(dequantize(q), y));
}

TEST(Nvfp4Spec, OddKLeavesHighNibbleEmpty) {
  auto x = torch::full({2, 7}, -1.0f);
  auto q = quantize(x, scalar(6.0f * 448.0f));  // s_g = 1; s_b = e4m3(1/6) = 0.171875; -1 -> -5.8 -> -6
  ASSERT_EQ(q.packed.sizes(), torch::IntArrayRef({2, 4}));
  EXPECT_EQ(q.packed[0][3].item<int>(), 0x0F);  // element 6 = -6 (code 15) low, nothing high
  EXPECT_TRUE(same_bits(dequantize(q), fake_quantize(x, scalar(2688.0f))));
}

TEST(Nvfp4Spec, BadArgumentsGiveClearErrors) {
  EXPECT_THROW(fake_quantize(torch::ones({4, 16}, torch::kInt32), scalar(1)), qad::Error);
  EXPECT_THROW(fake_quantize(torch::ones({4, 16}), torch::ones({2})), qad::Error);
  EXPECT_THROW(fake_quantize(torch::ones({4, 16}), torch::ones({}, torch::kFloat64)), qad::Error);
  auto out = torch::empty({4, 8});
  EXPECT_THROW(fake_quantize_out(torch::ones({4, 16}), scalar(1), out), qad::Error);
  try {
    fake_quantize(torch::ones({4, 16}, torch::kInt32), scalar(1));
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("float32, float16 or bfloat16"), std::string::npos) << e.what();
  }
}

}  // namespace
