// The training step's host facts on the GPU: a batch made by to_tensors on CUDA carries facts read from its host
// bytes, and the step takes its attention path and its label check from them instead of reading the device. On a
// tiny random BF16 Qwen3 (student NVFP4-quantized, the fused CUDA paths): the same loss with and without the facts
// on a left-padded batch, a different loss when the facts wrongly say "no padding" (so the step does use them),
// and a label outside the vocabulary still stopped with its position. Skips without a GPU.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/test_util.h"
#include "data/batch_tensors.h"
#include "model/causal_lm.h"
#include "quant/quantize_model.h"
#include "train/step.h"

namespace qad::train {
namespace {

model::CausalLM random_qwen3(uint64_t salt) {
  // head_dim 64, hidden 256: sizes the fused kernels take (multiples of 16).
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}}, {"vocab_size", 128}, {"hidden_size", 256},
                      {"intermediate_size", 512}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"head_dim", 64}, {"rms_norm_eps", 1e-6},
                      {"max_position_embeddings", 256}, {"tie_word_embeddings", false}, {"dtype", "bfloat16"}};
  model::CausalLM lm(model::parse_config(j, "tiny"));
  auto gen = qad::testing::seeded_generator(salt);
  {
    torch::NoGradGuard g;
    for (auto& [name, p] : lm->hf_tensors()) {
      auto r = torch::randn(p.sizes(), gen);
      p.copy_(name.ends_with("norm.weight") ? 1 + 0.1 * r : 0.1 * r);
    }
  }
  lm->to(torch::kCUDA, torch::kBFloat16);
  return lm;
}

TEST(FastStepCuda, HostFactsGiveTheSameLossAndLabelErrors) {
  QAD_REQUIRE_GPU();
  const int64_t v = 128, t = 64, pad = 9;
  data::Batch b;
  b.batch = 2;
  b.seq_len = t;
  auto gen = qad::testing::seeded_generator(42);
  auto ids = torch::randint(v, {2 * t}, gen, torch::kInt);
  b.input_ids.assign(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + 2 * t);
  b.targets = b.input_ids;
  b.loss_mask.assign(2 * t, 1);
  b.attention_mask.assign(2 * t, 1);
  // Row 1 is padded on the left: unmasked, its first real tokens would attend to the padding.
  for (int64_t i = t; i < t + pad; ++i) b.attention_mask[i] = 0, b.loss_mask[i] = 0;

  auto teacher = random_qwen3(31);
  auto student = random_qwen3(31);
  quant::QuantConfig qc;
  quant::apply_nvfp4(student, qc);
  auto x = data::to_tensors(b, torch::kCUDA);
  ASSERT_TRUE(x.input_ids.is_cuda());
  ASSERT_TRUE(x.host.known && x.host.padded);
  quant::calibrate(student, [&](const quant::BatchSink& sink) { sink(x.input_ids, x.attention_mask); }, qc);

  LossConfig loss;
  loss.kl = 1.0;
  loss.ce = 0.5;
  auto y = x;
  y.host = {};
  const double with_facts = compute_losses(student, &teacher, x, loss, false, nullptr).values.loss;
  const double without = compute_losses(student, &teacher, y, loss, false, nullptr).values.loss;
  ASSERT_TRUE(std::isfinite(with_facts));
  EXPECT_NEAR(with_facts, without, 1e-6 * std::abs(with_facts));
  EXPECT_EQ(compute_losses(student, &teacher, x, loss, false, nullptr).values.tokens, 2 * t - pad);
  auto wrong = x;
  wrong.host.padded = false;
  const double unmasked = compute_losses(student, &teacher, wrong, loss, false, nullptr).values.loss;
  EXPECT_GT(std::abs(unmasked - with_facts), 1e-3 * std::abs(with_facts)) << unmasked << " vs " << with_facts;

  b.targets[t + 2] = static_cast<int32_t>(v);  // at a padded position, not trained on: ignored
  EXPECT_NO_THROW(compute_losses(student, &teacher, data::to_tensors(b, torch::kCUDA), loss, false, nullptr));
  b.targets[3] = static_cast<int32_t>(v);
  const auto message = qad::testing::thrown_message(
      [&] { compute_losses(student, &teacher, data::to_tensors(b, torch::kCUDA), loss, false, nullptr); });
  EXPECT_NE(message.find(fmt::format("label {} at token 3 (flattened) is outside the vocabulary", v)), std::string::npos)
      << message;
}

}  // namespace
}  // namespace qad::train
