// The three implementations of NVFP4 fake quantization agree bit for bit on random data: the fused CPU
// reference, quantize→dequantize, and the LibTorch tensor-op formulation. Outputs are poisoned first.
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "nvfp4/quantize.h"
#include "nvfp4/scales.h"

namespace {
using namespace qad::nvfp4;
using qad::testing::same_bits;

struct Case {
  std::vector<int64_t> shape;
  torch::ScalarType dtype;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    for (auto shape : std::vector<std::vector<int64_t>>{{16}, {1, 16}, {7, 32}, {3, 5, 48}, {33, 172}, {9, 7}, {4, 1},
                                                        {2, 17}, {64, 256}}) {
      out.push_back({shape, dt});
    }
  }
  return out;
}

// Random data with blocks of very different magnitudes, zero blocks and exact zeros mixed in.
torch::Tensor mixed_magnitudes(const std::vector<int64_t>& shape, torch::Generator& gen) {
  auto x = torch::randn(shape, gen);
  auto flat = x.reshape({-1});
  auto scale = torch::pow(10.0, torch::randint(-6, 4, {flat.numel() / 16 + 1}, gen).to(torch::kFloat32));
  auto per = scale.repeat_interleave(16).narrow(0, 0, flat.numel());
  flat.mul_(per);
  flat.masked_fill_(torch::rand({flat.numel()}, gen) < 0.05, 0.0);
  if (flat.numel() >= 32) flat.narrow(0, 16, 16).zero_();
  return x;
}

TEST(Nvfp4Implementations, FusedEqualsRoundTripEqualsTensorOps) {
  auto gen = qad::testing::seeded_generator();
  for (const auto& c : cases()) {
    SCOPED_TRACE(::testing::Message() << "shape " << c.shape.size() << "-d last " << c.shape.back() << " dtype "
                                      << c.dtype);
    auto x = mixed_magnitudes(c.shape, gen).to(c.dtype);
    for (float amax_factor : {1.0f, 0.25f, 4.0f}) {  // own amax, an under- and an over-estimate
      auto a = compute_amax(x) * amax_factor;
      auto fused = torch::empty_like(x);
      qad::testing::poison(fused);
      fake_quantize_out(x, a, fused);
      QuantizedTensor q{torch::empty(packed_shape(x.sizes()), torch::kUInt8),
                        torch::empty(block_scales_shape(x.sizes()), torch::kUInt8), torch::empty({}), 0};
      qad::testing::poison(q.packed);
      qad::testing::poison(q.block_scales);
      quantize_out(x, a, q);
      auto round_trip = torch::empty_like(x);
      qad::testing::poison(round_trip);
      dequantize_out(q, round_trip);
      EXPECT_TRUE(same_bits(fused, round_trip));
      EXPECT_TRUE(same_bits(fused, fake_quantize_torch_ops(x, a)));
      EXPECT_FALSE(torch::isnan(fused).any().item<bool>());
    }
  }
}

TEST(Nvfp4Implementations, EveryOutputIsOnTheGridAndNearest) {
  // Independent of the implementation: y / (s_b s_g) must be an E2M1 value, and no other grid value
  // may be closer to x / (s_b s_g) (checked in double precision).
  auto gen = qad::testing::seeded_generator(1);
  auto x = torch::randn({64, 64}, gen);
  auto a = compute_amax(x);
  auto q = quantize(x, a);
  auto y = dequantize(q).to(torch::kFloat64);
  const double sg = q.global_scale.item<float>();
  const std::vector<double> grid = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (int64_t r = 0; r < 64; ++r) {
    for (int64_t c = 0; c < 64; ++c) {
      const double sb = e4m3_decode(static_cast<uint8_t>(q.block_scales[r][c / 16].item<int>()));
      const double v = x[r][c].item<double>() / (sb * sg);
      const double got = std::abs(y[r][c].item<double>() / (sb * sg));
      double best = 1e30;
      for (double g : grid) best = std::min(best, std::abs(std::min(std::abs(v), 6.0) - g));
      ASSERT_NEAR(std::abs(std::min(std::abs(v), 6.0) - got), best, 1e-5) << "at " << r << "," << c;
    }
  }
}

TEST(Nvfp4Implementations, AmaxMatchesTorch) {
  auto gen = qad::testing::seeded_generator(2);
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    auto x = torch::randn({37, 101}, gen).to(dt);
    EXPECT_EQ(compute_amax(x).item<float>(), x.abs().max().to(torch::kFloat32).item<float>());
  }
}

}  // namespace
