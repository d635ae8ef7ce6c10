// The training step's fast paths against its plain ones, on the CPU: the fused lm_head + KL/CE (FP64: same loss
// values and gradients), and the device-side step (fused AdamW's reference on FP32: same update, the poisoned
// step skipped with the weights untouched and the step count unchanged).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <optional>
#include <string>

#include "common/test_util.h"
#include "random_batch.h"
#include "data/batch_tensors.h"
#include "train/optimizer.h"
#include "train/step.h"
#include "train/step_marks.h"

namespace qad::train {
namespace {

using qad::testing::seeded_generator;
using qad::testing::source_dir;

model::CausalLM fixture(torch::ScalarType dtype, uint64_t noise_salt) {
  auto m = model::CausalLM::load(source_dir() / "tests/fixtures/models/qwen3_qknorm_headdim_tied", torch::kCPU,
                                 torch::kFloat32);
  m->to(dtype);
  if (noise_salt != 0) {
    auto gen = seeded_generator(noise_salt);
    torch::NoGradGuard ng;
    for (auto& [n, p] : m->hf_tensors()) {
      auto q = p;
      q.add_(torch::randn(p.sizes(), gen, torch::kFloat64).to(dtype) * 0.05 * (p.std().item<double>() + 1e-3));
    }
  }
  return m;
}

std::map<std::string, torch::Tensor> grads_and_reset(model::CausalLM& m) {
  std::map<std::string, torch::Tensor> g;
  for (auto& [n, p] : m->hf_tensors()) {
    g[n] = p.grad().defined() ? p.grad().clone() : torch::zeros_like(p);
    p.mutable_grad().reset();
  }
  return g;
}

TEST(FastStepTest, FusedHeadGivesTheLogitsPathsLossAndGradients) {
  auto teacher = fixture(torch::kFloat64, 0);
  auto student = fixture(torch::kFloat64, 21);
  for (auto& [n, p] : student->hf_tensors()) p.set_requires_grad(true);
  const int64_t v = teacher->config().vocab_size;
  std::vector<data::BatchTensors> micro = {padded_random_batch({16, 9, 12}, 16, v, 22),
                                           padded_random_batch({5, 16}, 16, v, 23)};
  TrainConfig cfg;
  cfg.loss.kl = 1.0;
  cfg.loss.ce = 0.4;
  cfg.loss.cka = 0.2;
  cfg.loss.cka_subsample_tokens = 0;
  cfg.loss.temperature = 1.5;
  cfg.loss.chunk_tokens = 7;
  cfg.loss.fused_head = 0;
  auto plain = accumulate_gradients(student, &teacher, micro, cfg, 3);
  auto want = grads_and_reset(student);
  cfg.loss.fused_head = 1;
  auto fused = accumulate_gradients(student, &teacher, micro, cfg, 3);
  auto got = grads_and_reset(student);

  EXPECT_NEAR(fused.loss, plain.loss, 1e-12 * std::abs(plain.loss));
  ASSERT_TRUE(fused.kl && fused.ce && fused.cka_term);
  EXPECT_NEAR(*fused.kl, *plain.kl, 1e-12 * *plain.kl);
  EXPECT_NEAR(*fused.ce, *plain.ce, 1e-12 * *plain.ce);
  EXPECT_NEAR(*fused.cka_term, *plain.cka_term, 1e-12);
  EXPECT_EQ(fused.tokens, plain.tokens);
  ASSERT_EQ(fused.cka.size(), plain.cka.size());
  for (const auto& [n, g] : want) {
    const double scale = g.abs().max().item<double>() + 1e-30;
    EXPECT_LE((got.at(n) - g).abs().max().item<double>(), 1e-10 * scale) << n;
  }
}

TEST(FastStepTest, DeviceSideStepMatchesHostStepAndSkipsPoisonedSteps) {
  auto teacher = fixture(torch::kFloat32, 0);
  auto a = fixture(torch::kFloat32, 31), b = fixture(torch::kFloat32, 31);
  const int64_t v = teacher->config().vocab_size;
  TrainConfig cfg;
  cfg.loss.kl = 1.0;
  cfg.optim.grad_clip = 0.05;  // small enough to clip
  AdamW host(a->hf_tensors(), cfg.optim), fused(b->hf_tensors(), cfg.optim);
  fused.set_fused(true);
  for (int step = 0; step < 2; ++step) {
    auto x = padded_random_batch({16, 11}, 16, v, 40 + static_cast<uint64_t>(step));
    StepOptions so{.lr = 1e-3, .config = &cfg, .rng_seed = 5};
    auto rh = train_step(a, &teacher, {x}, host, so);
    auto rf = train_step(b, &teacher, {x}, fused, so);
    EXPECT_FALSE(rf.skipped);
    EXPECT_NEAR(rf.values.loss, rh.values.loss, 1e-5 * std::abs(rh.values.loss));
    EXPECT_NEAR(rf.grad_norm, rh.grad_norm, 1e-5 * rh.grad_norm);
    EXPECT_GT(rh.grad_norm, cfg.optim.grad_clip);
    EXPECT_EQ(rf.values.tokens, rh.values.tokens);
  }
  EXPECT_EQ(fused.steps(), 2);
  auto pa = a->hf_tensors(), pb = b->hf_tensors();
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_LE((pa[i].second - pb[i].second).abs().max().item<double>(), 1e-5) << pa[i].first;
  }

  std::map<std::string, torch::Tensor> before;
  for (auto& [n, p] : b->hf_tensors()) before[n] = p.detach().clone();
  auto x = padded_random_batch({16, 16}, 16, v, 50);
  auto r = train_step(b, &teacher, {x}, fused, {.lr = 1e-3, .config = &cfg, .rng_seed = 0, .inject_nan = true});
  EXPECT_TRUE(r.skipped);
  EXPECT_FALSE(std::isfinite(r.values.loss));
  EXPECT_EQ(fused.steps(), 2);
  for (auto& [n, p] : b->hf_tensors()) EXPECT_TRUE(qad::testing::same_bits(p.detach(), before[n])) << n;
}

// Steps queued before the previous one is read (the trainer's overlap, step.h's QueuedStep) give the bits of steps
// read one by one: the same values and skips, weights, moments and step count, with poisoned steps in between (the
// step after a skipped one takes its bias corrections from the skip flag, not from the count the host had when it
// queued it; a wrong count changes the update, so the weights would differ).
TEST(FastStepTest, QueuedStepsGiveTheBitsOfStepsReadOneByOne) {
  auto teacher = fixture(torch::kFloat32, 0);
  auto a = fixture(torch::kFloat32, 71), b = fixture(torch::kFloat32, 71);
  const int64_t v = teacher->config().vocab_size;
  TrainConfig cfg;
  cfg.loss.kl = 1.0;
  cfg.optim.grad_clip = 0.05;
  AdamW one_by_one(a->hf_tensors(), cfg.optim), overlapped(b->hf_tensors(), cfg.optim);
  one_by_one.set_fused(true);
  overlapped.set_fused(true);
  const std::vector<bool> poisoned = {false, true, false, true, true, false, false};
  auto options = [&](size_t i) {
    return StepOptions{.lr = 1e-3 * static_cast<double>(i + 1), .config = &cfg, .rng_seed = i, .inject_nan = poisoned[i]};
  };
  auto batch = [&](size_t i) { return padded_random_batch({16, 13}, 16, v, 80 + i); };
  std::vector<StepResult> want, got;
  for (size_t i = 0; i < poisoned.size(); ++i) want.push_back(train_step(a, &teacher, {batch(i)}, one_by_one, options(i)));
  std::optional<QueuedStep> previous;
  for (size_t i = 0; i < poisoned.size(); ++i) {
    auto q = queue_train_step(b, &teacher, {batch(i)}, overlapped, options(i), previous ? &*previous : nullptr);
    EXPECT_FALSE(q.read());
    if (previous) got.push_back(read_train_step(*previous, overlapped));
    previous = std::move(q);
  }
  got.push_back(read_train_step(*previous, overlapped));
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].skipped, poisoned[i]) << "step " << i;
    EXPECT_EQ(got[i].skipped, want[i].skipped) << "step " << i;
    if (!poisoned[i]) {
      EXPECT_EQ(got[i].values.loss, want[i].values.loss) << "step " << i;
      EXPECT_EQ(got[i].grad_norm, want[i].grad_norm) << "step " << i;
    }
  }
  EXPECT_EQ(overlapped.steps(), 4);
  EXPECT_EQ(one_by_one.steps(), 4);
  auto pa = a->hf_tensors(), pb = b->hf_tensors();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(qad::testing::same_bits(pa[i].second, pb[i].second)) << pa[i].first;
  const auto sa = one_by_one.state(), sb = overlapped.state();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(qad::testing::same_bits(sa[i].second, sb[i].second)) << sa[i].first;
  // Reading twice gives the same result and gives no count back twice.
  EXPECT_TRUE(read_train_step(*previous, overlapped).values.loss == got.back().values.loss);
  EXPECT_EQ(overlapped.steps(), 4);
  // At most one unread step: a third step queued while the first is unread is refused before any work.
  auto first = queue_train_step(b, &teacher, {batch(0)}, overlapped, options(0));
  auto second = queue_train_step(b, &teacher, {batch(0)}, overlapped, options(0), &first);
  const auto message = qad::testing::thrown_message(
      [&] { queue_train_step(b, &teacher, {batch(0)}, overlapped, options(0), &second); });
  EXPECT_NE(message.find("one unread step at most"), std::string::npos) << message;
  EXPECT_EQ(overlapped.steps(), 6);
  read_train_step(first, overlapped);
  EXPECT_NO_THROW(read_train_step(second, overlapped));
}

// The step's points (step_marks.h) for a timeline: each micro-batch's teacher forward, student forward, loss and
// backward in that order, then the update and the read once; none once the sink is removed.
TEST(FastStepTest, StepMarksComeInTheStepsOrder) {
  auto teacher = fixture(torch::kFloat32, 0);
  auto student = fixture(torch::kFloat32, 61);
  const int64_t v = teacher->config().vocab_size;
  TrainConfig cfg;
  cfg.loss.kl = 1.0;
  AdamW opt(student->hf_tensors(), cfg.optim);
  opt.set_fused(true);
  std::vector<std::string> seen;
  set_step_mark_sink([&](const char* point) { seen.emplace_back(point); });
  auto x = padded_random_batch({16, 11}, 16, v, 62), y = padded_random_batch({9, 16}, 16, v, 63);
  train_step(student, &teacher, {x, y}, opt, {.lr = 1e-3, .config = &cfg, .rng_seed = 1});
  const std::vector<std::string> micro = {kMarkTeacherForward, kMarkStudentForward, kMarkLoss, kMarkBackward};
  std::vector<std::string> want = micro;
  want.insert(want.end(), micro.begin(), micro.end());
  want.push_back(kMarkOptimizer);
  want.push_back(kMarkRead);
  EXPECT_EQ(seen, want);
  set_step_mark_sink(nullptr);
  seen.clear();
  train_step(student, &teacher, {x}, opt, {.lr = 1e-3, .config = &cfg, .rng_seed = 2});
  EXPECT_TRUE(seen.empty());
}

// A batch from to_tensors decides padding and checks labels from its host facts: the same loss as the same tensors
// without facts (read from the device), another loss when the facts are made to say "no padding" (the step does
// use them), and a label outside the vocabulary still stops the step by name.
TEST(FastStepTest, BatchesWithHostFactsGiveTheSameLossAndLabelErrors) {
  auto teacher = fixture(torch::kFloat64, 0);
  auto student = fixture(torch::kFloat64, 41);
  const int64_t v = teacher->config().vocab_size, t = 12;
  data::Batch b;
  b.batch = 2;
  b.seq_len = t;
  auto gen = seeded_generator(42);
  auto ids = torch::randint(v, {2 * t}, gen, torch::kInt);
  b.input_ids.assign(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + 2 * t);
  b.targets = b.input_ids;
  b.loss_mask.assign(2 * t, 1);
  b.attention_mask.assign(2 * t, 1);
  // Row 1 is padded on the left (5 positions): unmasked, its real tokens would attend to the padding and take
  // other positions, so the masked and unmasked paths give different losses.
  for (int64_t i = t; i < t + 5; ++i) b.attention_mask[i] = 0, b.loss_mask[i] = 0;
  TrainConfig cfg;
  cfg.loss.kl = 1.0;
  cfg.loss.ce = 0.5;
  auto x = data::to_tensors(b);
  ASSERT_TRUE(x.host.known && x.host.padded);
  auto y = x;
  y.host = {};
  auto with_facts = compute_losses(student, &teacher, x, cfg.loss, false, nullptr);
  auto without = compute_losses(student, &teacher, y, cfg.loss, false, nullptr);
  EXPECT_EQ(with_facts.values.loss, without.values.loss);
  EXPECT_EQ(with_facts.values.tokens, 12 + 7);
  auto wrong = x;
  wrong.host.padded = false;
  const double unmasked = compute_losses(student, &teacher, wrong, cfg.loss, false, nullptr).values.loss;
  EXPECT_GT(std::abs(unmasked - with_facts.values.loss), 1e-6 * std::abs(with_facts.values.loss));

  b.targets[t + 2] = static_cast<int32_t>(v);  // not trained on (padding): ignored
  EXPECT_NO_THROW(compute_losses(student, &teacher, data::to_tensors(b), cfg.loss, false, nullptr));
  b.targets[3] = static_cast<int32_t>(v);
  const auto message = qad::testing::thrown_message(
      [&] { compute_losses(student, &teacher, data::to_tensors(b), cfg.loss, false, nullptr); });
  EXPECT_NE(message.find(fmt::format("label {} at token 3 (flattened) is outside the vocabulary", v)), std::string::npos)
      << message;
}

}  // namespace
}  // namespace qad::train
