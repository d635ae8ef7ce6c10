// The CUDA kernels against the CPU reference, byte for byte (packed E2M1, E4M3 scales) and bit for bit
// (fake-quantized values), on fresh seeded random tensors of many shapes, with poisoned outputs and a
// guard region after each output buffer. Skips where there is no GPU.
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "nvfp4/quantize.h"

namespace {
using namespace qad::nvfp4;
using qad::testing::same_bits;

constexpr int64_t kGuard = 64;  // elements after each output that no kernel may touch

// Random data with huge, tiny and zero blocks, within the dtype's finite range.
torch::Tensor hostile(const std::vector<int64_t>& shape, torch::Generator& gen, torch::ScalarType dt) {
  auto x = torch::randn(shape, gen);
  auto flat = x.reshape({-1});
  const int64_t nb = flat.numel() / 16 + 1;
  const int64_t lo = dt == torch::kFloat16 ? -20 : -30, hi = dt == torch::kFloat16 ? 12 : 30;
  auto exps = torch::randint(lo, hi, {nb}, gen).to(torch::kFloat32);
  flat.mul_(torch::pow(2.0, exps).repeat_interleave(16).narrow(0, 0, flat.numel()));
  flat.masked_fill_(torch::rand({flat.numel()}, gen) < 0.1, 0.0);
  return x.to(dt);
}

// A poisoned device buffer with a guard tail; returns the view of the first `numel` elements.
torch::Tensor guarded(const std::vector<int64_t>& shape, torch::TensorOptions opts, torch::Tensor& storage) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  storage = torch::empty({n + kGuard}, opts);
  qad::testing::poison(storage);
  return storage.narrow(0, 0, n).view(shape);
}

void expect_guard_intact(const torch::Tensor& storage, int64_t n) {
  auto tail = storage.narrow(0, n, kGuard).cpu();
  if (tail.is_floating_point()) {
    EXPECT_TRUE(torch::isnan(tail.to(torch::kFloat32)).all().item<bool>()) << "guard region overwritten";
  } else {
    EXPECT_TRUE((tail == 0xA5).all().item<bool>()) << "guard region overwritten";
  }
}

std::vector<std::vector<int64_t>> shapes() {
  return {{16}, {1, 16}, {3, 16}, {31, 64}, {127, 160}, {5, 172}, {9, 7}, {2, 17}, {1, 4096},
          {4, 3, 256}, {257, 1024}, {1000, 33}};
}

TEST(Nvfp4Cuda, FakeQuantizeMatchesCpuBitForBit) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(10);
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    for (const auto& shape : shapes()) {
      SCOPED_TRACE(::testing::Message() << "dtype " << dt << " last dim " << shape.back());
      auto x = hostile(shape, gen, dt);
      auto a = compute_amax(x);
      auto ref = fake_quantize(x, a);
      torch::Tensor storage;
      auto out = guarded(shape, x.options().device(torch::kCUDA), storage);
      fake_quantize_out(x.cuda(), a.cuda(), out);
      EXPECT_TRUE(same_bits(out, ref));
      expect_guard_intact(storage, x.numel());
      // The tensor-op formulation on the GPU too (LibTorch's CUDA ops must not round differently).
      EXPECT_TRUE(same_bits(fake_quantize_torch_ops(x.cuda(), a.cuda()), ref));
      // A calibrated amax smaller than the data: saturation paths.
      auto small = a * 0.1;
      EXPECT_TRUE(same_bits(fake_quantize(x.cuda(), small.cuda()), fake_quantize(x, small)));
    }
  }
}

TEST(Nvfp4Cuda, QuantizeMatchesCpuByteForByte) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(11);
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    for (const auto& shape : shapes()) {
      SCOPED_TRACE(::testing::Message() << "dtype " << dt << " last dim " << shape.back());
      auto x = hostile(shape, gen, dt);
      auto ref = quantize(x);
      torch::Tensor ps, ss;
      auto u8 = torch::TensorOptions().dtype(torch::kUInt8).device(torch::kCUDA);
      QuantizedTensor q{guarded(packed_shape(x.sizes()), u8, ps), guarded(block_scales_shape(x.sizes()), u8, ss),
                        torch::full({}, std::numeric_limits<float>::quiet_NaN(), torch::kCUDA), 0};
      quantize_out(x.cuda(), compute_amax(x).cuda(), q);
      EXPECT_TRUE(same_bits(q.packed, ref.packed));
      EXPECT_TRUE(same_bits(q.block_scales, ref.block_scales));
      EXPECT_TRUE(same_bits(q.global_scale, ref.global_scale));
      expect_guard_intact(ps, ref.packed.numel());
      expect_guard_intact(ss, ref.block_scales.numel());
      torch::Tensor ys;
      auto y = guarded(shape, x.options().device(torch::kCUDA), ys);
      dequantize_out(q, y);
      EXPECT_TRUE(same_bits(y, dequantize(ref, dt)));
      expect_guard_intact(ys, x.numel());
    }
  }
}

TEST(Nvfp4Cuda, MisalignedAndNonContiguousInputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(12);
  auto base = hostile({1, 16 * 65}, gen, torch::kBFloat16);
  auto x = base.narrow(1, 1, 16 * 64);  // 2-byte offset: not 16-byte aligned, takes the scalar path
  auto a = compute_amax(x);
  EXPECT_TRUE(same_bits(fake_quantize(x.cuda(), a.cuda()), fake_quantize(x, a)));
  auto t = hostile({64, 48}, gen, torch::kFloat32).t();  // non-contiguous
  EXPECT_TRUE(same_bits(fake_quantize(t.cuda(), compute_amax(t).cuda()), fake_quantize(t, compute_amax(t))));
}

TEST(Nvfp4Cuda, AmaxMatchesCpuAndPropagatesNaN) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(13);
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    auto x = hostile({513, 777}, gen, dt);
    EXPECT_TRUE(same_bits(compute_amax(x.cuda()), compute_amax(x)));
    x[100][3] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_TRUE(std::isnan(compute_amax(x.cuda()).item<float>()));
  }
}

TEST(Nvfp4Cuda, QuotientsAtAndNearRoundingMidpointsMatchCpu) {
  // The fused kernel divides through a reciprocal and falls back to true division near the E2M1
  // rounding midpoints; put quotients x / (s_b s_g) exactly on and a few ulps around each midpoint,
  // with an awkward global scale, in every block position.
  QAD_REQUIRE_GPU();
  const float amax = 10.0f, sg = amax / 2688.0f;
  const float d = 128.0f * sg;  // a block whose amax is 3 gets s_b = 128 (see the spec test)
  std::vector<float> values;
  for (float m : {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f}) {
    for (int k = -4; k <= 4; ++k) {
      float x = m * d;
      for (int j = 0; j < std::abs(k); ++j) x = std::nextafter(x, k < 0 ? 0.0f : 10.0f);
      values.push_back(x);
      values.push_back(-x);
    }
  }
  const int64_t per_block = 15, nblocks = (static_cast<int64_t>(values.size()) + per_block - 1) / per_block;
  auto x = torch::zeros({nblocks, 16});
  for (int64_t b = 0; b < nblocks; ++b) {
    x[b][b % 16] = 3.0f;  // the block amax, at a different position in each block
    for (int64_t i = 0, j = 0; i < 16 && b * per_block + j < static_cast<int64_t>(values.size()); ++i) {
      if (i == b % 16) continue;
      x[b][i] = values[b * per_block + j++];
    }
  }
  auto a = torch::tensor(amax).reshape({});
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    auto xd = x.to(dt);
    EXPECT_TRUE(same_bits(fake_quantize(xd.cuda(), a.cuda()), fake_quantize(xd, a))) << "dtype " << dt;
  }
}

TEST(Nvfp4Cuda, NonFiniteBlocksMatchCpu) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(14);
  auto x = torch::randn({8, 64}, gen);
  x[1][5] = std::numeric_limits<float>::infinity();
  x[6][60] = std::numeric_limits<float>::quiet_NaN();
  auto a = torch::tensor(3.0f).reshape({});
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    auto xd = x.to(dt);
    EXPECT_TRUE(same_bits(fake_quantize(xd.cuda(), a.cuda()), fake_quantize(xd, a)));
  }
}

}  // namespace
