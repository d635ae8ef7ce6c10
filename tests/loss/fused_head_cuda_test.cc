// The fused lm_head + KL / CE on a CUDA device (BF16 and FP32 operands) against the FP64 CPU computation on full
// logits; outputs start poisoned (the hidden-state gradient buffer is written row chunk by row chunk). Skips
// without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/test_util.h"
#include "loss/fused_head_losses.h"
#include "loss/logit_losses.h"

namespace qad::loss {
namespace {

TEST(FusedHeadCuda, MatchesFp64LogitsPath) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(31);
  const int64_t b = 3, t = 100, h = 64, v = 3000;
  auto hs = torch::randn({b, t, h}, gen), ht = torch::randn({b, t, h}, gen);
  auto ws = torch::randn({v, h}, gen) * 0.2, wt = torch::randn({v, h}, gen) * 0.2;
  auto labels = torch::randint(v, {b, t}, gen, torch::kLong);
  auto mask = torch::rand({b, t}, gen) > 0.2;
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    // Round the operands to the dtype first, so that the FP64 reference sees the same numbers.
    auto hs_d = hs.to(dtype), ws_d = ws.to(dtype), ht_d = ht.to(dtype), wt_d = wt.to(dtype);
    auto hs_g = hs_d.cuda().requires_grad_(true), ws_g = ws_d.cuda().requires_grad_(true);
    HeadLossOptions o{.kl_weight = 1.0, .ce_weight = 0.5, .temperature = 1.0, .chunk_tokens = 64};
    auto r = fused_head_losses(hs_g, ws_g, ht_d.cuda(), wt_d.cuda(), labels.cuda(), mask.cuda(), o);
    r.loss.backward();

    auto hs64 = hs_d.to(torch::kFloat64).requires_grad_(true), ws64 = ws_d.to(torch::kFloat64).requires_grad_(true);
    auto s = torch::linear(hs64, ws64);
    auto tl = torch::linear(ht_d.to(torch::kFloat64), wt_d.to(torch::kFloat64));
    auto ref = kl_divergence(s, tl, mask) + 0.5 * cross_entropy(s, labels, mask);
    ref.backward();
    // BF16 logits (the GEMM's output rounding) dominate the error; FP32 is far tighter.
    const double tol = dtype == torch::kBFloat16 ? 2e-2 : 1e-4;
    EXPECT_NEAR(r.loss.item<double>(), ref.item<double>(), tol * ref.item<double>()) << dtype;
    auto rel = [](const torch::Tensor& a, const torch::Tensor& b) {
      return (a.cpu().to(torch::kFloat64) - b).abs().max().item<double>() / (b.abs().max().item<double>() + 1e-30);
    };
    EXPECT_LE(rel(hs_g.grad(), hs64.grad()), 5 * tol) << dtype;
    EXPECT_LE(rel(ws_g.grad(), ws64.grad()), 5 * tol) << dtype;
    EXPECT_TRUE(torch::isfinite(hs_g.grad()).all().item<bool>());
  }
}

}  // namespace
}  // namespace qad::loss
