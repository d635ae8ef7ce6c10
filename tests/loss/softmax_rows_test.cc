// The per-row softmax losses (loss/softmax_rows.h): the plain reference against the tensor-op formulas of
// logit_losses (kl_divergence / cross_entropy per token, their autograd gradients), and fused_head_losses with the
// per-row code forced on (its CPU reference) against the tensor-op path, in FP32 with a mask, ignored labels,
// -inf logits, a temperature, and a vocabulary that is not a multiple of the vector width.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "common/test_util.h"
#include "loss/fused_head_losses.h"
#include "loss/logit_losses.h"
#include "loss/softmax_rows.h"

namespace qad::loss {
namespace {

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.to(torch::kFloat64), b64 = b.to(torch::kFloat64);
  return (a64 - b64).abs().max().item<double>() / (b64.abs().max().item<double>() + 1e-30);
}

TEST(SoftmaxRowsReference, EqualsPerTokenKlCeAndTheirAutogradGradients) {
  auto gen = qad::testing::seeded_generator(41);
  const int64_t rows = 5, V = 37;
  for (double T : {1.0, 2.5}) {
    auto s = torch::randn({rows, V}, gen, torch::kFloat64) * 3, t = torch::randn({rows, V}, gen, torch::kFloat64) * 3;
    t[1].narrow(0, 0, 4).fill_(-std::numeric_limits<double>::infinity());  // a teacher that rules tokens out
    auto labels = torch::randint(V, {rows}, gen, torch::kLong);
    auto a_kl = torch::rand({rows}, gen, torch::kFloat64), a_ce = torch::rand({rows}, gen, torch::kFloat64);

    kernels::SoftmaxRows a;
    a.student = s.to(torch::kFloat32);
    a.teacher = t.to(torch::kFloat32);
    a.temperature = T;
    a.kl_coef = a_kl.to(torch::kFloat32);
    a.kl = torch::full({rows}, NAN);
    a.grad = torch::full({rows, V}, NAN);
    if (T == 1.0) {
      a.labels = labels;
      a.ce_coef = a_ce.to(torch::kFloat32);
      a.ce = torch::full({rows}, NAN);
    }
    kernels::softmax_rows(a);

    // Independent formulas: per-token KL and CE as logit_losses computes them (one token per call), and the
    // gradient of sum_r a_kl[r] KL_r / T^2 ... through autograd (the per-row coefficient multiplies d KL_r / ds).
    auto s32 = a.student.to(torch::kFloat64).requires_grad_(true);
    auto t32 = a.teacher.to(torch::kFloat64);
    torch::Tensor total = torch::zeros({}, torch::kFloat64);
    for (int64_t r = 0; r < rows; ++r) {
      // kl_divergence returns T^2 * KL of the tempered distributions; the row kernel's kl is the KL itself.
      auto kl_r = kl_divergence(s32[r].unsqueeze(0), t32[r].unsqueeze(0), {}, {.temperature = T}) / (T * T);
      EXPECT_NEAR(a.kl[r].item<double>(), kl_r.item<double>(), 1e-5 * (1 + kl_r.item<double>())) << "T " << T << " row " << r;
      // d(T^2 KL)/ds = T (ps - pt): a_kl carries the T, so the gradient below is that of a_kl * T * KL.
      total = total + a_kl[r] * T * kl_r;
      if (T == 1.0) {
        auto ce_r = cross_entropy(s32[r].unsqueeze(0), labels[r].unsqueeze(0), {});
        EXPECT_NEAR(a.ce[r].item<double>(), ce_r.item<double>(), 1e-5 * (1 + ce_r.item<double>()));
        total = total + a_ce[r] * ce_r;
      }
    }
    total.backward();
    EXPECT_LE(rel_err(a.grad, s32.grad()), 1e-5) << "T " << T;
    EXPECT_TRUE(torch::isfinite(a.grad).all().item<bool>());
  }
}

TEST(SoftmaxRowsReference, RejectsCrossEntropyAtAnotherTemperatureAndMismatchedShapes) {
  kernels::SoftmaxRows a;
  a.student = torch::zeros({2, 8});
  a.labels = torch::zeros({2}, torch::kLong);
  a.ce = torch::empty({2});
  a.temperature = 2.0;
  EXPECT_THROW(kernels::softmax_rows(a), std::exception);
  a.temperature = 1.0;
  a.teacher = torch::zeros({2, 9});
  EXPECT_THROW(kernels::softmax_rows(a), std::exception);
}

// fused_head_losses with the per-row code (its CPU reference here; the CUDA kernel on a GPU) against tensor ops.
TEST(FusedHeadSoftmaxRows, PerRowPathEqualsTensorOpPath) {
  auto gen = qad::testing::seeded_generator(43);
  const int64_t b = 2, t = 9, h = 6, v = 29;
  auto hs = torch::randn({b, t, h}, gen), ht = torch::randn({b, t, 5}, gen);
  auto ws = torch::randn({v, h}, gen) * 0.7, wt = torch::randn({v, 5}, gen) * 0.7;
  auto labels = torch::randint(v, {b, t}, gen, torch::kLong);
  labels[0][2] = -100;
  auto mask = torch::rand({b, t}, gen) > 0.25;
  struct Setting {
    double kl, ce, T;
    bool ce_value;
  };
  for (const auto& st : {Setting{1.0, 0.4, 1.0, false}, Setting{0.7, 0.0, 2.0, false}, Setting{0.0, 1.0, 1.0, false},
                         Setting{1.0, 0.0, 1.0, true}}) {
    HeadLosses out[2];
    torch::Tensor g_h[2], g_w[2];
    for (int k = 0; k < 2; ++k) {
      HeadLossOptions o{.kl_weight = st.kl, .ce_weight = st.ce, .ce_value = st.ce_value, .temperature = st.T,
                        .chunk_tokens = 5,
                        .softmax_rows = k == 0 ? SoftmaxRowsUse::kOff : SoftmaxRowsUse::kAlways};
      auto hs_k = hs.clone().requires_grad_(true), ws_k = ws.clone().requires_grad_(true);
      out[k] = fused_head_losses(hs_k, ws_k, ht, wt, labels, mask, o);
      out[k].loss.backward();
      g_h[k] = hs_k.grad();
      g_w[k] = ws_k.grad();
    }
    const std::string what = "kl " + std::to_string(st.kl) + " ce " + std::to_string(st.ce) + " T " + std::to_string(st.T);
    EXPECT_NEAR(out[1].loss.item<double>(), out[0].loss.item<double>(), 1e-5 * out[0].loss.abs().item<double>()) << what;
    EXPECT_EQ(out[1].kl.defined(), out[0].kl.defined()) << what;
    EXPECT_EQ(out[1].ce.defined(), out[0].ce.defined()) << what;
    if (out[0].ce.defined()) {
      EXPECT_NEAR(out[1].ce.item<double>(), out[0].ce.item<double>(), 1e-5 * out[0].ce.item<double>()) << what;
    }
    EXPECT_LE(rel_err(g_h[1], g_h[0]), 1e-5) << what;
    EXPECT_LE(rel_err(g_w[1], g_w[0]), 1e-5) << what;
  }
}

}  // namespace
}  // namespace qad::loss
