// The fused CUDA kernels on fresh seeded random inputs, into poisoned output buffers with guard regions: against
// the CPU references (rms_norm_cpu.cc, swiglu_cpu.cc, rope_cpu.cc) and against the unfused LibTorch ops on the
// GPU, forward and backward, for every dtype and the vector-per-thread / lanes-per-row variants. Skips where
// there is no GPU.
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

OutputQuant on_cuda(const OutputQuant& q) { return {q.enabled() ? q.amax.cuda() : torch::Tensor(), q.clipped}; }

// Rows 1..2 vectors per thread (and 4 for float32 8192), with and without the residual add and the quantizer.
struct RmsCase {
  std::vector<int64_t> shape;
  bool residual, quant, clipped;
};

std::vector<RmsCase> rms_cases() {
  return {{{3, 5, 64}, false, false, false}, {{7, 48}, true, false, false},  {{2, 3, 1024}, false, true, false},
          {{5, 2048}, true, true, false},    {{3, 4096}, true, true, true},   {{2, 8192}, false, true, false},
          {{257, 1024}, true, true, false}};
}

TEST(FusedCuda, RmsNormForwardMatchesReferenceAndUnfusedOps) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(21);
  for (auto dt : float_types()) {
    for (const auto& c : rms_cases()) {
      SCOPED_TRACE(::testing::Message() << name_of(dt) << " " << c.shape.back() << " residual " << c.residual
                                        << " quant " << c.quant);
      auto x = random(c.shape, gen, dt), r = random(c.shape, gen, dt);
      auto w = (1 + 0.2 * torch::randn({c.shape.back()}, gen)).to(dt);
      const OutputQuant q = c.quant ? OutputQuant{nvfp4::compute_amax(x) * 0.6, c.clipped} : OutputQuant{};
      auto ref = rms_norm_forward(x, c.residual ? r : torch::Tensor(), w, kEps, q);

      const int64_t rows = x.numel() / c.shape.back();
      auto opts = x.options().device(torch::kCUDA);
      torch::Tensor ys, rs, hs;
      RmsNormForward out{guarded(c.shape, opts, ys), guarded({rows}, opts.dtype(torch::kFloat32), rs),
                         c.residual ? guarded(c.shape, opts, hs) : torch::Tensor()};
      auto xc = x.cuda(), rc = r.cuda(), wc = w.cuda();
      rms_norm_forward_out(xc, c.residual ? rc : torch::Tensor(), wc, kEps, on_cuda(q), out);
      EXPECT_TRUE(guard_intact(ys));
      EXPECT_TRUE(guard_intact(rs));
      auto h = c.residual ? xc + rc : xc;
      if (c.residual) {
        EXPECT_TRUE(guard_intact(hs));
        EXPECT_TRUE(same_bits(out.residual, h));
        EXPECT_TRUE(same_bits(out.residual, ref.residual));
      }
      // rstd: a few ulp from LibTorch's on the GPU and from the CPU reference.
      EXPECT_LE(max_relative_error(out.rstd, rms_rstd_ops(h, kEps)), kRstdRelTolerance);
      EXPECT_LE(max_relative_error(out.rstd, ref.rstd), kRstdRelTolerance);
      // Given its rstd, the kernel's output is the unfused ops' to the bit.
      auto pre = rms_norm_given_rstd(h, wc, out.rstd);
      EXPECT_TRUE(same_bits(out.y, q.enabled() ? nvfp4::fake_quantize(pre, q.amax.cuda()) : pre));
      // And the CPU reference's, on the rows where both rstds agree.
      const int64_t k = c.shape.back();
      auto same_rows = (out.rstd.cpu() == ref.rstd);
      EXPECT_TRUE(same_bits(out.y.cpu().reshape({-1, k}).index({same_rows}), ref.y.reshape({-1, k}).index({same_rows})));
    }
  }
}

TEST(FusedCuda, RmsNormBackwardMatchesReferenceAndAutograd) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(22);
  for (auto dt : float_types()) {
    for (const auto& c : rms_cases()) {
      SCOPED_TRACE(::testing::Message() << name_of(dt) << " " << c.shape.back() << " residual " << c.residual
                                        << " quant " << c.quant << " clipped " << c.clipped);
      auto x = random(c.shape, gen, dt), r = random(c.shape, gen, dt), gy = random(c.shape, gen, dt);
      auto gh = random(c.shape, gen, dt);
      auto w = (1 + 0.2 * torch::randn({c.shape.back()}, gen)).to(dt);
      const OutputQuant q = c.quant ? OutputQuant{nvfp4::compute_amax(x) * 0.6, c.clipped} : OutputQuant{};
      auto f = rms_norm_forward(x, c.residual ? r : torch::Tensor(), w, kEps, q);
      auto h = c.residual ? f.residual : x;
      // The same h and rstd on both devices: the comparison isolates the backward.
      auto ref = rms_norm_backward(gy, c.residual ? gh : torch::Tensor(), h, w, f.rstd, q, true);
      auto opts = x.options().device(torch::kCUDA);
      torch::Tensor gs, ws;
      RmsNormGrads out{guarded(c.shape, opts, gs), guarded({c.shape.back()}, opts.dtype(torch::kFloat32), ws)};
      rms_norm_backward_out(gy.cuda(), c.residual ? gh.cuda() : torch::Tensor(), h.cuda(), w.cuda(), f.rstd.cuda(),
                            on_cuda(q), out);
      EXPECT_TRUE(guard_intact(gs));
      EXPECT_TRUE(guard_intact(ws));
      EXPECT_LE(normalised_error(out.input, ref.input), grad_tolerance(dt));
      EXPECT_LE(normalised_error(out.weight, ref.weight), 1e-5);  // FP32 sums in another order

      // Against autograd through the unfused ops on the GPU, via the autograd functions the model calls.
      auto xa = x.cuda().requires_grad_(true), ra = r.cuda().requires_grad_(true);
      auto wa = w.cuda().requires_grad_(true);
      auto xu = x.cuda().requires_grad_(true), ru = r.cuda().requires_grad_(true);
      auto wu = w.cuda().requires_grad_(true);
      auto qc = on_cuda(q);
      torch::Tensor ya, ha;
      if (c.residual) {
        std::tie(ha, ya) = add_rms_norm(xa, ra, wa, kEps, qc);
      } else {
        ya = rms_norm(xa, wa, kEps, qc);
      }
      auto hu = c.residual ? xu + ru : xu * 1;
      auto yu = quantize_ste(rms_norm_ops(hu, wu, kEps), qc);
      auto gyc = gy.cuda().to(torch::kFloat64), ghc = gh.cuda().to(torch::kFloat64);
      auto la = (ya.to(torch::kFloat64) * gyc).sum(), lu = (yu.to(torch::kFloat64) * gyc).sum();
      if (c.residual) {
        la = la + (ha.to(torch::kFloat64) * ghc).sum();
        lu = lu + (hu.to(torch::kFloat64) * ghc).sum();
      }
      la.backward();
      lu.backward();
      EXPECT_LE(normalised_error(xa.grad(), xu.grad()), grad_tolerance(dt));
      EXPECT_LE(normalised_error(wa.grad(), wu.grad()), grad_tolerance(dt));
      if (c.residual) {
        EXPECT_LE(normalised_error(ra.grad(), ru.grad()), grad_tolerance(dt));
      }
    }
  }
}

TEST(FusedCuda, SwigluMatchesUnfusedOpsBitForBitAndReference) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(23);
  for (auto dt : float_types()) {
    for (int mode = 0; mode < 3; ++mode) {  // no quantizer, identity STE, clipped STE
      for (const std::vector<int64_t>& shape : {std::vector<int64_t>{3, 5, 96}, {2, 3072}, {1, 16}}) {
        SCOPED_TRACE(::testing::Message() << name_of(dt) << " mode " << mode << " last dim " << shape.back());
        auto g = random(shape, gen, dt, 3.0), u = random(shape, gen, dt), gy = random(shape, gen, dt);
        const OutputQuant q = mode == 0 ? OutputQuant{} : OutputQuant{nvfp4::compute_amax(u) * 2.0, mode == 2};
        auto ref = swiglu_forward(g, u, q);
        torch::Tensor ys;
        auto y = guarded(shape, g.options().device(torch::kCUDA), ys);
        auto gc = g.cuda().requires_grad_(true), uc = u.cuda().requires_grad_(true);
        auto qc = on_cuda(q);
        swiglu_forward_out(gc.detach(), uc.detach(), qc, y);
        EXPECT_TRUE(guard_intact(ys));
        // Same float formula as ATen's CUDA silu (expf), so the same bits as the unfused GPU ops.
        auto unfused = quantize_ste(torch::silu(gc) * uc, qc);
        EXPECT_TRUE(same_bits(y, unfused));
        // CPU reference: glibc's exp, which differs from CUDA's expf in the last bits. In FP32 without a quantizer
        // every such ulp shows (measured on the H200: 6-12% of elements), so compare by relative error there;
        // rounding to BF16/FP16 or to the FP4 grid absorbs them.
        if (dt == torch::kFloat32 && mode == 0) {
          EXPECT_LE(max_relative_error(y, ref), 1e-6);
        } else {
          EXPECT_LE(mismatch_fraction(y, ref), 0.005);
        }

        (unfused.to(torch::kFloat64) * gy.cuda().to(torch::kFloat64)).sum().backward();
        torch::Tensor ggs, gus;
        auto gg = guarded(shape, g.options().device(torch::kCUDA), ggs), gu = guarded(shape, g.options().device(torch::kCUDA), gus);
        swiglu_backward_out(gy.cuda(), gc.detach(), uc.detach(), qc, gg, gu);
        EXPECT_TRUE(guard_intact(ggs));
        EXPECT_TRUE(guard_intact(gus));
        EXPECT_LE(normalised_error(gg, gc.grad()), grad_tolerance(dt));
        EXPECT_LE(normalised_error(gu, uc.grad()), grad_tolerance(dt));
        RecordProperty("swiglu_grad_gate_bit_mismatch", std::to_string(mismatch_fraction(gg, gc.grad())));
        auto [rg, ru] = swiglu_backward(gy, g, u, q);
        EXPECT_LE(normalised_error(gg, rg), grad_tolerance(dt));
        EXPECT_LE(normalised_error(gu, ru), grad_tolerance(dt));
      }
    }
  }
}

TEST(FusedCuda, RopeMatchesReferenceAndUnfusedOps) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(24);
  for (auto dt : float_types()) {
    for (int64_t d : {64, 128, 256}) {
      for (bool norm : {false, true}) {
        SCOPED_TRACE(::testing::Message() << name_of(dt) << " head_dim " << d << " norm " << norm);
        const int64_t b = 2, t = 37, h = 5;
        auto x = random({b, t, h, d}, gen, dt);
        auto w = norm ? (1 + 0.2 * torch::randn({d}, gen)).to(dt) : torch::Tensor();
        auto angles = torch::rand({b, t, d / 2}, gen) * 50;
        auto cos = torch::cat({angles, angles}, -1).cos().to(dt), sin = torch::cat({angles, angles}, -1).sin().to(dt);
        auto go = random({b, h, t, d}, gen, dt);
        auto ref = rope_forward(x, w, kEps, cos, sin);
        auto opts = x.options().device(torch::kCUDA);
        torch::Tensor os, rs;
        RopeForward out{guarded({b, h, t, d}, opts, os), norm ? guarded({b, t, h}, opts.dtype(torch::kFloat32), rs)
                                                              : torch::Tensor()};
        auto xc = x.cuda(), wc = norm ? w.cuda() : w, cc = cos.cuda(), sc = sin.cuda();
        rope_forward_out(xc, wc, kEps, cc, sc, out);
        EXPECT_TRUE(guard_intact(os));
        if (!norm) {
          EXPECT_TRUE(same_bits(out.out, ref.out));
          EXPECT_TRUE(same_bits(out.out, rope_ops(xc, wc, kEps, cc, sc)));
        } else {
          EXPECT_TRUE(guard_intact(rs));
          EXPECT_LE(max_relative_error(out.rstd, ref.rstd), kRstdRelTolerance);
          EXPECT_LE(max_relative_error(out.rstd, rms_rstd_ops(xc, kEps).reshape({b, t, h})), kRstdRelTolerance);
          auto m = rms_norm_given_rstd(xc, wc, out.rstd).transpose(1, 2);
          EXPECT_TRUE(same_bits(out.out, m * cc.unsqueeze(1) + rotate_half(m) * sc.unsqueeze(1)));
        }
        // Backward from the same rstd on both devices.
        auto rstd = norm ? ref.rstd : torch::Tensor();
        auto gref = rope_backward(go, x, w, cos, sin, rstd, true);
        torch::Tensor gs, ws;
        RopeGrads g{guarded({b, t, h, d}, opts, gs), norm ? guarded({d}, opts.dtype(torch::kFloat32), ws) : torch::Tensor()};
        rope_backward_out(go.cuda(), xc, wc, cc, sc, norm ? rstd.cuda() : rstd, g);
        EXPECT_TRUE(guard_intact(gs));
        if (!norm) {
          EXPECT_TRUE(same_bits(g.input, gref.input));
        } else {
          EXPECT_TRUE(guard_intact(ws));
          EXPECT_LE(normalised_error(g.input, gref.input), grad_tolerance(dt));
          EXPECT_LE(normalised_error(g.weight, gref.weight), 1e-5);
        }
        // Autograd: the fused function against the unfused ops on the GPU.
        auto xa = xc.clone().requires_grad_(true), xu = xc.clone().requires_grad_(true);
        auto wa = norm ? wc.clone().requires_grad_(true) : wc, wu = norm ? wc.clone().requires_grad_(true) : wc;
        auto goc = go.cuda().to(torch::kFloat64);
        (rope(xa, wa, kEps, cc, sc).to(torch::kFloat64) * goc).sum().backward();
        (rope_ops(xu, wu, kEps, cc, sc).to(torch::kFloat64) * goc).sum().backward();
        EXPECT_LE(normalised_error(xa.grad(), xu.grad()), grad_tolerance(dt));
        if (norm) {
          EXPECT_LE(normalised_error(wa.grad(), wu.grad()), grad_tolerance(dt));
        }
      }
    }
  }
}

TEST(FusedCuda, UnsupportedShapesAreRefusedClearly) {
  QAD_REQUIRE_GPU();
  auto x = torch::randn({4, 40}, torch::kCUDA);
  EXPECT_FALSE(rms_norm_cuda_supports(x));
  EXPECT_THROW(rms_norm_forward(x, torch::Tensor(), torch::ones({40}, torch::kCUDA), kEps, {}), qad::Error);
  EXPECT_FALSE(rope_cuda_supports(torch::randn({1, 2, 3, 48}, torch::kCUDA)));
}

}  // namespace
}  // namespace qad::fused

namespace qad::fused {
namespace {

// add_rows_'s kernel against its reference and against ATen's index_add_ on the GPU (both exact for distinct
// rows): the CKA shape (1024 of 8192 rows of 2048), a width that is not a whole number of threads' vectors, and
// an odd width (falls back to index_add_). The destination starts random, so untouched rows are checked too.
TEST(FusedCuda, AddRowsEqualsReferenceAndIndexAdd) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(72);
  struct Shape {
    int64_t rows, n, width;
  };
  for (const auto& s : {Shape{8192, 1024, 2048}, Shape{300, 77, 40}, Shape{50, 9, 13}}) {
    for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      auto dst = torch::randn({s.rows, s.width}, gen).to(dt);
      auto src = torch::randn({s.n, s.width}, gen).to(dt);
      auto index = torch::randperm(s.rows, gen, torch::kLong).narrow(0, 0, s.n).contiguous();
      auto ref = dst.clone();
      add_rows_reference(ref, index, src);
      auto got = dst.cuda();
      add_rows_(got, index.cuda(), src.cuda());
      auto aten = dst.cuda().index_add_(0, index.cuda(), src.cuda());
      const std::string what = std::string(c10::toString(dt)) + " width " + std::to_string(s.width);
      EXPECT_TRUE(same_bits(got.cpu(), ref)) << what;
      EXPECT_TRUE(same_bits(got.cpu(), aten.cpu())) << what;
    }
  }
}

// add_gather_rows' and add_scatter_rows' kernels against their references and against ATen's add + index_select
// (add + add_rows_) on the GPU, into poisoned outputs: the CKA shape (1024 of 4 x 2048 rows of 2048), a width of
// 1.5 threads' vectors with a slot beyond the sampled rows that must keep its poison, and every dtype.
TEST(FusedCuda, AddGatherRowsEqualsReferenceAndTheUnfusedOps) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(74);
  struct Shape {
    std::vector<int64_t> sizes;
    int64_t n;
  };
  for (const auto& s : {Shape{{4, 2048, 2048}, 1024}, Shape{{3, 100, 48}, 77}, Shape{{16, 4096}, 9}}) {
    for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      const int64_t H = s.sizes.back(), N = torch::empty(s.sizes).numel() / H;
      auto a = random(s.sizes, gen, dt), b = random(s.sizes, gen, dt);
      auto index = torch::randperm(N, gen, torch::kLong).narrow(0, 0, s.n).contiguous();
      auto slots = slots_of_rows(index.cuda(), N);
      const std::string what = std::string(c10::toString(dt)) + " width " + std::to_string(H);
      ASSERT_TRUE(add_gather_rows_cuda_supports(a.cuda())) << what;
      auto out = torch::full(s.sizes, std::nan(""), a.options()).cuda();
      auto rows = torch::full({s.n + 1, H}, std::nan(""), a.options()).cuda();
      add_gather_rows_out(out, a.cuda(), b.cuda(), slots, rows);
      auto ref_out = torch::empty_like(a), ref_rows = torch::full({s.n + 1, H}, std::nan(""), a.options());
      add_gather_rows_reference(ref_out, a, b, slots.cpu(), ref_rows);
      EXPECT_TRUE(same_bits(out.cpu(), ref_out)) << what;
      EXPECT_TRUE(same_bits(rows.cpu(), ref_rows)) << what;  // NaN in both at the unnamed slot: same bits
      auto aten = a.cuda() + b.cuda();
      EXPECT_TRUE(same_bits(out, aten)) << what;
      EXPECT_TRUE(same_bits(rows.narrow(0, 0, s.n), aten.reshape({N, H}).index_select(0, index.cuda()))) << what;
      EXPECT_TRUE(rows[s.n].isnan().all().item<bool>()) << what;

      // The scatter (its backward): (a + b) and then the rows' gradient at the sampled rows, as ATen's add and
      // add_rows_ give, into a poisoned output and in place into a; the extra slot is never read (NaN there).
      auto g = torch::cat({random({s.n, H}, gen, dt), torch::full({1, H}, std::nan(""), a.options())}).cuda();
      auto sc = torch::full(s.sizes, std::nan(""), a.options()).cuda();
      add_scatter_rows_out(sc, a.cuda(), b.cuda(), slots, g);
      auto ref_sc = torch::empty_like(a);
      add_scatter_rows_reference(ref_sc, a, b, slots.cpu(), g.cpu());
      auto unfused = aten.reshape({N, H}).clone();
      add_rows_(unfused, index.cuda(), g.narrow(0, 0, s.n));
      EXPECT_TRUE(same_bits(sc.cpu(), ref_sc)) << what;
      EXPECT_TRUE(same_bits(sc, unfused.view(s.sizes))) << what;
      auto in_place = a.cuda();
      add_scatter_rows_out(in_place, in_place, b.cuda(), slots, g);
      EXPECT_TRUE(same_bits(in_place, sc)) << what;
    }
  }
  // A width that is not whole 16-byte vectors is not the kernel's (add_and_tap_rows then adds and gathers apart).
  EXPECT_FALSE(add_gather_rows_cuda_supports(torch::zeros({4, 13}, torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA))));
}

}  // namespace
}  // namespace qad::fused
