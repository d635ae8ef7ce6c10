// PTQ on a real model: stories260K's held-out perplexity in FP32, NVFP4 with max calibration and NVFP4 with MSE
// weight calibration (calibrated on the model's own greedy generations, evaluated on the 120 TinyStories-like
// sentences of golden_tokenizer.json). The figures are printed and recorded (docs/quant.md quotes them).
#include <gtest/gtest.h>

#include <cmath>

#include "quant/perplexity.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"

namespace qad::testing {
namespace {

TEST(PtqStories260K, HeldOutPerplexity) {
  const auto dir = shared_dir() / "models/stories260K";
  const auto heldout = stories_heldout();
  ASSERT_EQ(heldout.size(), 120u);

  auto fp32 = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  const auto base = quant::heldout_nll(fp32, heldout);
  // Independent check of the NLL on the first sentence with a hand-written log-softmax.
  {
    torch::NoGradGuard g;
    const auto& d = heldout[0];
    auto logits = fp32->forward(torch::tensor(d, torch::kLong).unsqueeze(0)).logits[0].to(torch::kFloat64);
    double nll = 0;
    for (size_t t = 0; t + 1 < d.size(); ++t) {
      auto row = logits[static_cast<int64_t>(t)];
      const double m = row.max().item<double>();
      nll += m + std::log((row - m).exp().sum().item<double>()) - row[d[t + 1]].item<double>();
    }
    EXPECT_NEAR(quant::heldout_nll(fp32, {d}).nll_sum, nll, 1e-9 * nll);
  }

  auto ptq = [&](quant::CalibMethod m) {
    quant::QuantConfig c;
    c.method = m;
    auto lm = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
    quant::apply_nvfp4(lm, c);
    quant::calibrate(lm, document_batches(stories_generations(), 64), c);
    return quant::heldout_nll(lm, heldout);
  };
  const auto max = ptq(quant::CalibMethod::kMax);
  const auto mse = ptq(quant::CalibMethod::kMse);
  ASSERT_EQ(base.tokens, max.tokens);
  std::printf("stories260K held-out (%lld tokens): perplexity FP32 %.4f, NVFP4-max %.4f, NVFP4-mse %.4f\n",
              static_cast<long long>(base.tokens), base.perplexity(), max.perplexity(), mse.perplexity());
  ::testing::Test::RecordProperty("ppl_fp32", std::to_string(base.perplexity()));
  ::testing::Test::RecordProperty("ppl_nvfp4_max", std::to_string(max.perplexity()));
  ::testing::Test::RecordProperty("ppl_nvfp4_mse", std::to_string(mse.perplexity()));
  // A 260K model at 4 bits loses accuracy, but stays a language model: worse than FP32, far better than
  // uniform guessing (perplexity 512).
  EXPECT_GT(max.perplexity(), base.perplexity());
  EXPECT_GT(mse.perplexity(), base.perplexity());
  EXPECT_LT(max.perplexity(), 2.0 * base.perplexity());
  EXPECT_LT(mse.perplexity(), 2.0 * base.perplexity());
}

}  // namespace
}  // namespace qad::testing
