// The fused ops' CPU references against the unfused LibTorch op sequences they replace (tests/fused/unfused.h):
// forwards bit for bit (the RMSNorm given the reference's own FP32 rstd, which itself is checked to a few ulp,
// since it is a reduction in another order), backwards against autograd through the unfused ops within the
// tolerances of unfused.h; and the autograd functions against the backward they call.
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "fused/add_gather_rows.h"
#include "fused/autograd.h"
#include "fused/rms_norm.h"
#include "fused/rope.h"
#include "fused/row_add.h"
#include "fused/swiglu.h"
#include "fused/unfused.h"
#include "nvfp4/quantize.h"
#include "util/error.h"

namespace qad::fused {
namespace {

using namespace testing;
using qad::testing::same_bits;

constexpr double kEps = 1e-6;

torch::Tensor random(const std::vector<int64_t>& shape, torch::Generator& gen, torch::ScalarType dt, double scale = 1) {
  return (torch::randn(shape, gen) * scale).to(dt);
}

// A quantizer whose amax is below the data's, so that saturation and the clipped STE both occur.
OutputQuant quantizer_for(const torch::Tensor& y, bool clipped) {
  return {nvfp4::compute_amax(y.detach()) * 0.7, clipped};
}

struct RmsCase {
  std::vector<int64_t> shape;
  bool residual, quant, clipped;
};

std::vector<RmsCase> rms_cases() {
  return {{{3, 5, 64}, false, false, false}, {{7, 48}, true, false, false}, {{4, 40}, false, true, false},
          {{2, 3, 256}, true, true, false},  {{6, 32}, true, true, true},   {{2, 1024}, false, true, true}};
}

TEST(FusedReference, RmsNormForwardMatchesTheUnfusedOps) {
  auto gen = qad::testing::seeded_generator(1);
  for (auto dt : float_types()) {
    for (const auto& c : rms_cases()) {
      SCOPED_TRACE(::testing::Message() << name_of(dt) << " " << c.shape.back() << " residual " << c.residual
                                        << " quant " << c.quant);
      auto x = random(c.shape, gen, dt), r = random(c.shape, gen, dt);
      auto w = (1 + 0.2 * torch::randn({c.shape.back()}, gen)).to(dt);
      auto h = c.residual ? x + r : x;
      const OutputQuant q = c.quant ? quantizer_for(rms_norm_ops(h, w, kEps), c.clipped) : OutputQuant{};
      auto f = rms_norm_forward(x, c.residual ? r : torch::Tensor(), w, kEps, q);
      if (c.residual) {
        EXPECT_TRUE(same_bits(f.residual, h));
      }
      auto want_rstd = rms_rstd_ops(h, kEps);
      EXPECT_LE(max_relative_error(f.rstd, want_rstd), kRstdRelTolerance);
      auto pre = rms_norm_given_rstd(h, w, f.rstd);
      EXPECT_TRUE(same_bits(f.y, q.enabled() ? nvfp4::fake_quantize(pre, q.amax) : pre));
      // Rows whose rstd came out with LibTorch's bits equal the unfused path entirely.
      auto same_rows = (f.rstd == want_rstd);
      EXPECT_GT(same_rows.sum().item<int64_t>(), 0);
      auto unfused = rms_norm_ops(h, w, kEps);
      if (q.enabled()) unfused = nvfp4::fake_quantize(unfused, q.amax);
      const int64_t k = c.shape.back();
      EXPECT_TRUE(same_bits(f.y.reshape({-1, k}).index({same_rows}), unfused.reshape({-1, k}).index({same_rows})));
    }
  }
}

TEST(FusedReference, RmsNormBackwardMatchesAutogradThroughTheUnfusedOps) {
  auto gen = qad::testing::seeded_generator(2);
  for (auto dt : float_types()) {
    for (const auto& c : rms_cases()) {
      SCOPED_TRACE(::testing::Message() << name_of(dt) << " " << c.shape.back() << " residual " << c.residual
                                        << " quant " << c.quant << " clipped " << c.clipped);
      auto x = random(c.shape, gen, dt).requires_grad_(true), r = random(c.shape, gen, dt).requires_grad_(true);
      auto w = (1 + 0.2 * torch::randn({c.shape.back()}, gen)).to(dt).requires_grad_(true);
      auto gy = random(c.shape, gen, dt), gh = random(c.shape, gen, dt);
      const OutputQuant q = c.quant ? quantizer_for(rms_norm_ops(x.detach(), w.detach(), kEps), c.clipped) : OutputQuant{};
      // Unfused: autograd through the ops (h's second use, the residual stream, gets gh).
      auto h = c.residual ? x + r : x * 1;
      auto y = quantize_ste(rms_norm_ops(h, w, kEps), q);
      auto loss = (y.to(torch::kFloat64) * gy.to(torch::kFloat64)).sum();
      if (c.residual) loss = loss + (h.to(torch::kFloat64) * gh.to(torch::kFloat64)).sum();
      loss.backward();
      // Fused: the op's backward, and the autograd function that calls it.
      auto f = rms_norm_forward(x.detach(), c.residual ? r.detach() : torch::Tensor(), w.detach(), kEps, q);
      auto hd = c.residual ? f.residual : x.detach();
      auto g = rms_norm_backward(gy, c.residual ? gh : torch::Tensor(), hd, w.detach(), f.rstd, q, true);
      EXPECT_LE(normalised_error(g.input, x.grad()), grad_tolerance(dt));
      EXPECT_LE(normalised_error(g.weight, w.grad()), grad_tolerance(dt));
      if (c.clipped) {  // the clipped STE zeroes exactly where the unfused one does (up to rounding ties)
        EXPECT_LE(mismatch_fraction(g.input.eq(0), x.grad().eq(0)), 0.01);
      }

      auto xa = x.detach().clone().requires_grad_(true), ra = r.detach().clone().requires_grad_(true);
      auto wa = w.detach().clone().requires_grad_(true);
      torch::Tensor ya, ha;
      if (c.residual) {
        std::tie(ha, ya) = add_rms_norm(xa, ra, wa, kEps, q);
      } else {
        ya = rms_norm(xa, wa, kEps, q);
      }
      EXPECT_TRUE(same_bits(ya, f.y));
      auto la = (ya.to(torch::kFloat64) * gy.to(torch::kFloat64)).sum();
      if (c.residual) la = la + (ha.to(torch::kFloat64) * gh.to(torch::kFloat64)).sum();
      la.backward();
      EXPECT_TRUE(same_bits(xa.grad(), g.input));
      if (c.residual) {
        EXPECT_TRUE(same_bits(ra.grad(), g.input));
      }
      EXPECT_TRUE(same_bits(wa.grad(), g.weight.to(dt)));
    }
  }
}

// LibTorch 1.13's CPU silu has no float16 kernel: the CPU comparison covers float32 and bfloat16, the GPU test
// all three (against ATen's CUDA silu itself).
std::vector<torch::ScalarType> cpu_silu_types() { return {torch::kFloat32, torch::kBFloat16}; }

TEST(FusedReference, SwigluForwardMatchesTheUnfusedOps) {
  auto gen = qad::testing::seeded_generator(3);
  for (auto dt : cpu_silu_types()) {
    for (bool quant : {false, true}) {
      SCOPED_TRACE(::testing::Message() << name_of(dt) << " quant " << quant);
      auto g = random({5, 7, 96}, gen, dt, 3.0), u = random({5, 7, 96}, gen, dt);
      auto unfused = silu_ops(g) * u;
      const OutputQuant q = quant ? quantizer_for(unfused, false) : OutputQuant{};
      auto y = swiglu_forward(g, u, q);
      if (!quant) {
        // silu's exp: glibc's here, SLEEF's in LibTorch's vectorised CPU kernel; they differ in rare last bits of
        // FP32, which rounding to 16 bits almost always hides.
        EXPECT_LE(mismatch_fraction(y, unfused), dt == torch::kFloat32 ? 0.05 : 0.002);
        EXPECT_LE(max_relative_error(y, unfused), dt == torch::kFloat32 ? 1e-6 : 1e-2);
      } else {
        EXPECT_TRUE(same_bits(y, nvfp4::fake_quantize(swiglu_forward(g, u, {}), q.amax)));
        EXPECT_LE(mismatch_fraction(y, nvfp4::fake_quantize(unfused, q.amax)), 0.005);
      }
    }
  }
}

TEST(FusedReference, SwigluBackwardMatchesAutogradThroughTheUnfusedOps) {
  auto gen = qad::testing::seeded_generator(4);
  for (auto dt : cpu_silu_types()) {
    for (int mode = 0; mode < 3; ++mode) {  // no quantizer, identity STE, clipped STE
      SCOPED_TRACE(::testing::Message() << name_of(dt) << " mode " << mode);
      auto g = random({4, 80}, gen, dt, 3.0).requires_grad_(true), u = random({4, 80}, gen, dt).requires_grad_(true);
      auto gy = random({4, 80}, gen, dt);
      const OutputQuant q = mode == 0 ? OutputQuant{} : quantizer_for(silu_ops(g.detach()) * u.detach(), mode == 2);
      auto y = quantize_ste(silu_ops(g) * u, q);
      (y.to(torch::kFloat64) * gy.to(torch::kFloat64)).sum().backward();
      auto [gg, gu] = swiglu_backward(gy, g.detach(), u.detach(), q);
      EXPECT_LE(normalised_error(gg, g.grad()), grad_tolerance(dt));
      EXPECT_LE(normalised_error(gu, u.grad()), grad_tolerance(dt));

      auto ga = g.detach().clone().requires_grad_(true), ua = u.detach().clone().requires_grad_(true);
      (swiglu(ga, ua, q).to(torch::kFloat64) * gy.to(torch::kFloat64)).sum().backward();
      EXPECT_TRUE(same_bits(ga.grad(), gg));
      EXPECT_TRUE(same_bits(ua.grad(), gu));
    }
  }
}

TEST(FusedReference, RopeForwardMatchesTheUnfusedOps) {
  auto gen = qad::testing::seeded_generator(5);
  for (auto dt : float_types()) {
    for (bool norm : {false, true}) {
      SCOPED_TRACE(::testing::Message() << name_of(dt) << " norm " << norm);
      const int64_t b = 2, t = 5, h = 3, d = 32;
      auto x = random({b, t, h, d}, gen, dt);
      auto w = norm ? (1 + 0.2 * torch::randn({d}, gen)).to(dt) : torch::Tensor();
      auto angles = torch::rand({b, t, d / 2}, gen) * 20;
      auto cos = torch::cat({angles, angles}, -1).cos().to(dt), sin = torch::cat({angles, angles}, -1).sin().to(dt);
      auto f = rope_forward(x, w, kEps, cos, sin);
      ASSERT_EQ(f.out.sizes(), torch::IntArrayRef({b, h, t, d}));
      if (!norm) {
        EXPECT_TRUE(same_bits(f.out, rope_ops(x, w, kEps, cos, sin)));  // every step rounds as the ops do
        continue;
      }
      EXPECT_LE(max_relative_error(f.rstd, rms_rstd_ops(x, kEps).reshape({b, t, h})), kRstdRelTolerance);
      auto m = rms_norm_given_rstd(x, w, f.rstd).transpose(1, 2);
      EXPECT_TRUE(same_bits(f.out, m * cos.unsqueeze(1) + rotate_half(m) * sin.unsqueeze(1)));
    }
  }
}

TEST(FusedReference, RopeBackwardMatchesAutogradThroughTheUnfusedOps) {
  auto gen = qad::testing::seeded_generator(6);
  for (auto dt : float_types()) {
    for (bool norm : {false, true}) {
      SCOPED_TRACE(::testing::Message() << name_of(dt) << " norm " << norm);
      const int64_t b = 2, t = 4, h = 3, d = 64;
      auto x = random({b, t, h, d}, gen, dt).requires_grad_(true);
      auto w = norm ? (1 + 0.2 * torch::randn({d}, gen)).to(dt).requires_grad_(true) : torch::Tensor();
      auto angles = torch::rand({b, t, d / 2}, gen) * 20;
      auto cos = torch::cat({angles, angles}, -1).cos().to(dt), sin = torch::cat({angles, angles}, -1).sin().to(dt);
      auto go = random({b, h, t, d}, gen, dt);
      (rope_ops(x, w, kEps, cos, sin).to(torch::kFloat64) * go.to(torch::kFloat64)).sum().backward();
      auto f = rope_forward(x.detach(), norm ? w.detach() : w, kEps, cos, sin);
      auto g = rope_backward(go, x.detach(), norm ? w.detach() : w, cos, sin, f.rstd, true);
      if (!norm) {
        EXPECT_TRUE(same_bits(g.input, x.grad()));  // no reduction: autograd's roundings exactly
      } else {
        EXPECT_LE(normalised_error(g.input, x.grad()), grad_tolerance(dt));
        EXPECT_LE(normalised_error(g.weight, w.grad()), grad_tolerance(dt));
      }
      auto xa = x.detach().clone().requires_grad_(true);
      auto wa = norm ? w.detach().clone().requires_grad_(true) : torch::Tensor();
      auto out = rope(xa, wa, kEps, cos, sin);
      EXPECT_TRUE(same_bits(out, f.out));
      (out.to(torch::kFloat64) * go.to(torch::kFloat64)).sum().backward();
      EXPECT_TRUE(same_bits(xa.grad(), g.input));
      if (norm) {
        EXPECT_TRUE(same_bits(wa.grad(), g.weight.to(dt)));
      }
    }
  }
}

TEST(FusedReference, BadArgumentsGiveOneLineErrors) {
  auto x = torch::randn({4, 32});
  EXPECT_THROW(rms_norm_forward(x, torch::Tensor(), torch::ones({16}), kEps, {}), qad::Error);
  EXPECT_THROW(rms_norm_forward(x.to(torch::kFloat64), torch::Tensor(), torch::ones({32}), kEps, {}), qad::Error);
  EXPECT_THROW(swiglu_forward(x, torch::randn({4, 16}), {}), qad::Error);
  EXPECT_THROW(rope_forward(torch::randn({2, 3, 4}), torch::Tensor(), kEps, x, x), qad::Error);
  EXPECT_THROW(rms_norm_forward(x, torch::Tensor(), torch::ones({32}), kEps, {torch::ones({2}), false}), qad::Error);
}

}  // namespace
}  // namespace qad::fused

namespace qad::fused {
namespace {

// The reference of add_rows_ against float arithmetic written out: the chosen rows gain src (one rounding to the
// dtype), every other row keeps its bits; and add_rows_ on the CPU (ATen's index_add_) gives the same bits.
TEST(FusedReference, AddRowsAddsTheChosenRowsOnce) {
  auto gen = qad::testing::seeded_generator(71);
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    auto dst = torch::randn({40, 24}, gen).to(dt);
    auto src = torch::randn({6, 24}, gen).to(dt);
    auto index = torch::tensor({31, 0, 7, 39, 12, 5}, torch::kLong);
    auto ref = dst.clone();
    add_rows_reference(ref, index, src);
    auto expect = dst.to(torch::kFloat32).clone();  // (to() of a float tensor is the tensor itself)
    for (int64_t i = 0; i < index.size(0); ++i) {
      const auto r = index[i].item<int64_t>();
      expect[r] = (expect[r] + src[i].to(torch::kFloat32));
    }
    EXPECT_TRUE(qad::testing::same_bits(ref, expect.to(dt))) << c10::toString(dt);
    auto got = dst.clone();
    add_rows_(got, index, src);
    EXPECT_TRUE(qad::testing::same_bits(got, ref)) << c10::toString(dt);
  }
  auto dst = torch::zeros({4, 8});
  EXPECT_THROW(add_rows_reference(dst, torch::tensor({1, 1}, torch::kLong), torch::ones({2, 8})), qad::Error);
  EXPECT_THROW(add_rows_(dst, torch::tensor({1}, torch::kLong), torch::ones({1, 8}, torch::kFloat64)), qad::Error);
}

// The reference of add_gather_rows against independent arithmetic: out is ATen's add (float math rounded once,
// bit for bit), each sampled row lands in its slot, and the slots no row names keep their poison.
TEST(FusedReference, AddGatherRowsIsTheAddAndTheSampledRows) {
  auto gen = qad::testing::seeded_generator(73);
  for (auto dt : {torch::kFloat64, torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    auto a = torch::randn({3, 10, 24}, gen).to(dt), b = torch::randn({3, 10, 24}, gen).to(dt);
    auto index = torch::tensor({29, 0, 7, 13, 12}, torch::kLong);
    auto slots = slots_of_rows(index, 30);
    EXPECT_EQ(slots.scalar_type(), torch::kInt);
    EXPECT_EQ(slots[29].item<int>(), 0);
    EXPECT_EQ(slots[12].item<int>(), 4);
    EXPECT_EQ((slots >= 0).sum().item<int64_t>(), 5);
    auto out = torch::full({3, 10, 24}, std::nan(""), a.options());
    auto rows = torch::full({6, 24}, std::nan(""), a.options());  // one more row than sampled: must stay poisoned
    add_gather_rows_reference(out, a, b, slots, rows);
    const std::string what = c10::toString(dt);
    EXPECT_TRUE(same_bits(out, a + b)) << what;
    EXPECT_TRUE(same_bits(rows.narrow(0, 0, 5), (a + b).reshape({30, 24}).index_select(0, index))) << what;
    EXPECT_TRUE(rows[5].isnan().all().item<bool>()) << what;
    // The dispatcher on the CPU is the reference.
    auto out2 = torch::empty_like(out), rows2 = rows.clone();
    add_gather_rows_out(out2, a, b, slots, rows2);
    EXPECT_TRUE(same_bits(out2, out) && same_bits(rows2.narrow(0, 0, 5), rows.narrow(0, 0, 5))) << what;

    // The scatter: (a + b) rounded, then the sampled rows' gradient added (as add_rows_ does), in place into a too.
    auto g = torch::randn({5, 24}, gen).to(dt);
    auto expect = (a + b).reshape({30, 24}).index_add_(0, index, g);  // one addition per element: exact for FP64
    auto sc = torch::full({3, 10, 24}, std::nan(""), a.options());
    add_scatter_rows_reference(sc, a, b, slots, torch::cat({g, torch::full({1, 24}, std::nan(""), g.options())}));
    EXPECT_TRUE(same_bits(sc, expect.view({3, 10, 24}))) << what;
    auto in_place = a.clone();
    add_scatter_rows_out(in_place, in_place, b, slots, torch::cat({g, g.narrow(0, 0, 1)}));
    EXPECT_TRUE(same_bits(in_place, sc)) << what;
  }
  auto a = torch::ones({4, 8}), rows = torch::empty({2, 8});
  auto out = torch::empty({4, 8});
  EXPECT_THROW(add_scatter_rows_out(out, a, a, torch::tensor({0, 2, -1, -1}, torch::kInt), rows), qad::Error);
  EXPECT_THROW(add_gather_rows_out(out, a, a, torch::tensor({0, 1, -1, -1}, torch::kLong), rows), qad::Error);  // int64
  EXPECT_THROW(add_gather_rows_out(out, a, a, torch::tensor({0, 2, -1, -1}, torch::kInt), rows), qad::Error);  // slot 2 of 2
  EXPECT_THROW(add_gather_rows_out(out, a, a.to(torch::kFloat64), torch::tensor({0, 1, -1, -1}, torch::kInt), rows),
               qad::Error);
  EXPECT_FALSE(add_gather_rows_cuda_supports(a));  // a CPU tensor
}

}  // namespace
}  // namespace qad::fused
