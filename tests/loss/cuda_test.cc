// The losses on a CUDA device against the FP64 CPU computation: BF16/FP32 inputs, masks and labels that live
// on the CPU, subsampling with a CPU generator. Skips without a GPU.
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "loss/cka_accumulator.h"
#include "loss/cka_loss.h"
#include "loss/gradcheck.h"
#include "loss/logit_losses.h"
#include "util/error.h"

namespace {
using namespace qad::loss;
using qad::testing::all_close;

TEST(LossCuda, KlAndCrossEntropyMatchTheCpu) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(1);
  auto s = torch::randn({3, 50, 1000}, gen) * 3;
  // Teacher logits distinct even in BF16: (1 + m/128) * 2^e for m < 128 and e in [-4, 3] are 1000 distinct
  // values, all exact in BF16. Ties at the k-th value would let CPU and GPU pick different top-k sets.
  auto idx = torch::arange(1000, torch::kLong);
  auto grid = (1 + (idx % 128).to(torch::kFloat32) / 128) * torch::pow(2.0, (torch::div(idx, 128, "floor") - 4).to(torch::kFloat32));
  auto t = torch::stack({grid.index({torch::randperm(1000, gen)}), grid.index({torch::randperm(1000, gen)}),
                         grid.index({torch::randperm(1000, gen)})})
               .unsqueeze(1)
               .repeat({1, 50, 1});
  auto mask = torch::rand({3, 50}, gen) > 0.2;  // stays on the CPU
  auto labels = torch::randint(0, 1000, {3, 50}, gen, torch::kLong);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto s_lp = s.to(dtype), t_lp = t.to(dtype);
    for (int64_t k : {0, 64}) {
      KLOptions o;
      o.top_k = k;
      o.temperature = 1.5;
      o.chunk_tokens = 37;
      auto sc = s_lp.detach().cuda().requires_grad_(true);
      auto loss = kl_divergence(sc, t_lp.cuda(), mask, o);
      loss.backward();
      auto s64 = s_lp.detach().to(torch::kFloat64).requires_grad_(true);
      auto ref = kl_divergence(s64, t_lp.to(torch::kFloat64), mask, o);
      ref.backward();
      EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-5 * ref.item<double>()) << dtype << " k " << k;
      EXPECT_TRUE(all_close(sc.grad(), s64.grad(), dtype == torch::kBFloat16 ? 1e-2 : 1e-4, 1e-7)) << dtype;
    }
    auto sc = s_lp.detach().cuda().requires_grad_(true);
    auto ce = cross_entropy(sc, labels, mask, 64);  // labels on the CPU too
    auto s64 = s_lp.detach().to(torch::kFloat64).requires_grad_(true);
    auto ce_ref = cross_entropy(s64, labels, mask, 64);
    EXPECT_NEAR(ce.item<double>(), ce_ref.item<double>(), 1e-5 * ce_ref.item<double>()) << dtype;
  }
  auto bad = labels.clone();
  bad[0][0] = 1000;
  EXPECT_THROW(cross_entropy(s.cuda(), bad, {}), qad::Error);
}

TEST(LossCuda, CkaLossAndAccumulatorMatchTheCpu) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(2);
  NamedHidden th, sh, th64, sh64;
  for (int l = 0; l < 2; ++l) {
    auto t = (torch::randn({2, 300, 64}, gen) + 1.0).to(torch::kBFloat16);
    auto s = (t.to(torch::kFloat32) + 0.5 * torch::randn({2, 300, 64}, gen)).to(torch::kBFloat16);
    const std::string name = "layers." + std::to_string(l);
    th.emplace_back(name, t.cuda());
    sh.emplace_back(name, s.detach().cuda().requires_grad_(true));
    th64.emplace_back(name, t.to(torch::kFloat64));
    sh64.emplace_back(name, s.detach().to(torch::kFloat64).requires_grad_(true));
  }
  auto mask = torch::rand({2, 300}, gen) > 0.1;
  for (auto est : {CkaEstimator::kBiased, CkaEstimator::kDebiased}) {
    for (int64_t sub : {0, 200}) {
      CkaLossOptions o;
      o.estimator = est;
      o.subsample_tokens = sub;
      auto g1 = torch::make_generator<at::CPUGeneratorImpl>(5), g2 = torch::make_generator<at::CPUGeneratorImpl>(5);
      auto r = cka_loss(th, sh, mask, o, &g1);
      auto ref = cka_loss(th64, sh64, mask, o, &g2);
      EXPECT_NEAR(r.loss.item<double>(), ref.loss.item<double>(), 1e-5) << "sub " << sub;
      for (auto& [n, t] : sh) t.mutable_grad() = torch::Tensor();
      for (auto& [n, t] : sh64) t.mutable_grad() = torch::Tensor();
      r.loss.backward();
      ref.loss.backward();
      for (int l = 0; l < 2; ++l) {
        auto scale = sh64[l].second.grad().abs().max().item<double>();
        EXPECT_TRUE(all_close(sh[l].second.grad(), sh64[l].second.grad(), 2e-2, 2e-2 * scale)) << "layer " << l;
      }
    }
  }
  CkaAccumulator gpu, cpu;
  for (int l = 0; l < 2; ++l) {
    gpu.add(th[l].first, th[l].second, sh[l].second, mask);
    cpu.add(th64[l].first, th64[l].second, sh64[l].second, mask);
  }
  auto a = gpu.result(), b = cpu.result();
  for (size_t l = 0; l < a.size(); ++l) {
    EXPECT_NEAR(a[l].full_biased, b[l].full_biased, 1e-5);
    EXPECT_NEAR(a[l].full_debiased, b[l].full_debiased, 1e-5);
    EXPECT_NEAR(a[l].minibatch_debiased, b[l].minibatch_debiased, 1e-5);
  }
}

}  // namespace
