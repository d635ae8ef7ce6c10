// The training step against hand-assembled references, in FP64 on CPU: loss value and every parameter's
// gradient equal KL + CE + lambda * mean(1 - CKA) written out with plain torch ops (Gram-form CKA);
// k micro-batches accumulate to the gradient of one batch; AdamW equals its closed form; a poisoned step is
// skipped without touching the weights; the checkpoint round trip is bitwise.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "util/remove_tree.h"
#include "common/test_util.h"
#include "random_batch.h"
#include "data/batch_tensors.h"
#include "loss/cka.h"
#include "loss/stacked_rows.h"
#include "checkpoint/training_checkpoint.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/step.h"

namespace qad::train {
namespace {

using qad::testing::seeded_generator;
using qad::testing::source_dir;

const char* kFixture = "tests/fixtures/models/qwen3_qknorm_headdim_tied";

// CausalLM::load takes the checkpoint dtypes (FP32/BF16/FP16); the FP64 copy is made in memory.
model::CausalLM load64() {
  auto m = model::CausalLM::load(source_dir() / kFixture, torch::kCPU, torch::kFloat32);
  m->to(torch::kFloat64);
  return m;
}

// The student: the teacher's weights plus seeded noise, so that KL and 1 - CKA are far from 0.
model::CausalLM perturbed_student(uint64_t salt) {
  auto s = load64();
  auto gen = seeded_generator(salt);
  torch::NoGradGuard ng;
  for (auto& [n, p] : s->hf_tensors()) {
    auto q = p;
    q.add_(torch::randn(p.sizes(), gen, torch::kFloat64) * 0.05 * (p.std().item<double>() + 1e-3));
  }
  return s;
}

TrainConfig config(double kl, double ce, double cka) {
  TrainConfig c;
  c.loss.kl = kl;
  c.loss.ce = ce;
  c.loss.cka = cka;
  c.loss.cka_subsample_tokens = 0;  // all tokens: the reference below has no sampling
  c.loss.log_ce = false;
  return c;
}

std::map<std::string, torch::Tensor> grads_of(model::CausalLM& m) {
  std::map<std::string, torch::Tensor> g;
  for (auto& [n, p] : m->hf_tensors()) g[n] = p.grad().defined() ? p.grad().clone() : torch::zeros_like(p);
  return g;
}

void zero(model::CausalLM& m) {
  for (auto& [n, p] : m->hf_tensors()) {
    p.set_requires_grad(true);
    p.mutable_grad().reset();
  }
}

// KL + CE + lambda * mean_l (1 - CKA_l), written out directly.
torch::Tensor reference_loss(model::CausalLM& student, model::CausalLM& teacher, const data::BatchTensors& b,
                             double wkl, double wce, double lambda, loss::CkaEstimator est) {
  model::ForwardOptions fo;
  fo.return_hidden = true;
  fo.attention_mask = b.attention_mask;
  model::ForwardOutput t;
  {
    torch::NoGradGuard ng;
    t = teacher->forward(b.input_ids, fo);
  }
  auto s = student->forward(b.input_ids, fo);
  auto keep = b.loss_mask.reshape({-1}).to(torch::kFloat64);
  const auto n = keep.sum();
  auto ls = torch::log_softmax(s.logits.reshape({-1, s.logits.size(-1)}), -1);
  auto lt = torch::log_softmax(t.logits.reshape({-1, t.logits.size(-1)}), -1);
  auto kl_tok = (lt.exp() * (lt - ls)).sum(-1);
  auto kl = (kl_tok * keep).sum() / n;
  auto ce_tok = -ls.gather(1, b.targets.reshape({-1, 1})).squeeze(1);
  auto ce = (ce_tok * keep).sum() / n;
  auto rows = b.attention_mask.reshape({-1}).nonzero().reshape({-1});
  std::vector<torch::Tensor> one_minus;
  for (int64_t l = 0; l < student->config().num_layers; ++l) {
    const auto& th = t.hidden[static_cast<size_t>(l)].second;
    const auto& sh = s.hidden[static_cast<size_t>(l)].second;
    auto x = th.reshape({-1, th.size(-1)}).index_select(0, rows);
    auto y = sh.reshape({-1, sh.size(-1)}).index_select(0, rows);
    one_minus.push_back(1 - loss::linear_cka_gram(x, y, est));
  }
  return wkl * kl + wce * ce + lambda * torch::stack(one_minus).mean();
}

void expect_close(const std::map<std::string, torch::Tensor>& a, const std::map<std::string, torch::Tensor>& b,
                  double rtol) {
  for (const auto& [n, g] : a) {
    const auto& r = b.at(n);
    const double scale = r.abs().max().item<double>() + 1e-30;
    const double err = (g - r).abs().max().item<double>();
    EXPECT_LE(err, rtol * scale) << n << ": max |grad - reference| " << err << " vs max |reference| " << scale;
  }
}

class StepTest : public ::testing::TestWithParam<loss::CkaEstimator> {};

TEST_P(StepTest, LossAndGradientsEqualHandAssembledFp64) {
  auto teacher = load64();
  auto student = perturbed_student(1);
  auto b = padded_random_batch({12, 9, 16}, 16, teacher->config().vocab_size, 2);
  auto cfg = config(1.0, 0.5, 0.3);
  cfg.loss.cka_estimator = GetParam() == loss::CkaEstimator::kDebiased ? "debiased" : "biased";

  zero(student);
  const auto stacks_before = loss::stack_rows_counts();
  auto values = accumulate_gradients(student, &teacher, {b}, cfg, 7);
  auto got = grads_of(student);
  // Both models' rows were stacked as views of their forwards' rows buffers (loss/stacked_rows.h), no copy.
  const auto stacks_after = loss::stack_rows_counts();
  EXPECT_EQ(stacks_after.views - stacks_before.views, 2);
  EXPECT_EQ(stacks_after.copies - stacks_before.copies, 0);

  zero(student);
  auto ref = reference_loss(student, teacher, b, 1.0, 0.5, 0.3, GetParam());
  ref.backward();
  auto want = grads_of(student);

  EXPECT_NEAR(values.loss, ref.item<double>(), 1e-12 * std::abs(ref.item<double>()));
  ASSERT_TRUE(values.kl && values.ce && values.cka_term);
  EXPECT_GT(*values.kl, 1e-3);        // the perturbation is large enough for the test to mean something
  EXPECT_GT(*values.cka_term, 1e-5);
  EXPECT_EQ(values.tokens, 12 + 9 + 16);
  EXPECT_EQ(values.cka.size(), 3u);
  expect_close(got, want, 1e-9);
}

INSTANTIATE_TEST_SUITE_P(Estimators, StepTest,
                         ::testing::Values(loss::CkaEstimator::kBiased, loss::CkaEstimator::kDebiased));

TEST(StepTest, MicroBatchesAccumulateToOneBatchGradient) {
  auto teacher = load64();
  auto student = perturbed_student(3);
  const int64_t v = teacher->config().vocab_size;
  auto big = padded_random_batch({16, 5, 11, 16, 2}, 16, v, 4);  // unequal token counts per micro-batch
  auto cfg = config(1.0, 0.7, 0.0);

  zero(student);
  auto one = accumulate_gradients(student, &teacher, {big}, cfg, 0);
  auto want = grads_of(student);

  auto slice = [&](int64_t from, int64_t len) {
    data::BatchTensors s;
    s.input_ids = big.input_ids.narrow(0, from, len);
    s.targets = big.targets.narrow(0, from, len);
    s.loss_mask = big.loss_mask.narrow(0, from, len);
    s.attention_mask = big.attention_mask.narrow(0, from, len);
    return s;
  };
  zero(student);
  auto three = accumulate_gradients(student, &teacher, {slice(0, 2), slice(2, 2), slice(4, 1)}, cfg, 0);
  auto got = grads_of(student);

  EXPECT_NEAR(three.loss, one.loss, 1e-12 * one.loss);
  EXPECT_NEAR(*three.kl, *one.kl, 1e-12 * *one.kl);
  EXPECT_EQ(three.tokens, one.tokens);
  expect_close(got, want, 1e-10);
}

TEST(StepTest, PoisonedStepIsSkippedAndLeavesWeightsAlone) {
  auto teacher = load64();
  auto student = perturbed_student(5);
  auto b = padded_random_batch({16, 16}, 16, teacher->config().vocab_size, 6);
  auto cfg = config(1.0, 0.0, 0.0);
  AdamW opt(student->hf_tensors(), cfg.optim);
  std::map<std::string, torch::Tensor> before;
  for (auto& [n, p] : student->hf_tensors()) before[n] = p.detach().clone();

  auto r = train_step(student, &teacher, {b}, opt, {.lr = 1e-3, .config = &cfg, .rng_seed = 0, .inject_nan = true});
  EXPECT_TRUE(r.skipped);
  EXPECT_FALSE(std::isfinite(r.values.loss));
  EXPECT_EQ(opt.steps(), 0);
  for (auto& [n, p] : student->hf_tensors()) EXPECT_TRUE(qad::testing::same_bits(p.detach(), before[n])) << n;

  auto ok = train_step(student, &teacher, {b}, opt, {.lr = 1e-3, .config = &cfg, .rng_seed = 0});
  EXPECT_FALSE(ok.skipped);
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_GT((student->hf_tensors()[0].second.detach() - before[student->hf_tensors()[0].first]).abs().max().item<double>(), 0);
}

// PyTorch's AdamW, written out for one tensor over three steps, with clipping off.
TEST(AdamWTest, MatchesClosedForm) {
  auto gen = seeded_generator(8);
  auto p = torch::randn({4, 3}, gen, torch::kFloat64);
  auto ref = p.clone();
  OptimConfig o;
  o.weight_decay = 0.1;
  o.beta1 = 0.8;
  o.beta2 = 0.9;
  o.eps = 1e-6;
  AdamW opt({{"w", p}}, o);
  auto m = torch::zeros_like(ref), v = torch::zeros_like(ref);
  for (int t = 1; t <= 3; ++t) {
    auto g = torch::randn({4, 3}, gen, torch::kFloat64);
    p.mutable_grad() = g.to(torch::kFloat32).to(torch::kFloat64);
    const double lr = 0.01 * t;
    opt.step(lr);
    // The optimizer keeps FP32 moments; the reference follows the same rounding of the gradient.
    auto gf = g.to(torch::kFloat32).to(torch::kFloat64);
    ref = ref * (1 - lr * o.weight_decay);
    m = o.beta1 * m + (1 - o.beta1) * gf;
    v = o.beta2 * v + (1 - o.beta2) * gf * gf;
    auto mh = m / (1 - std::pow(o.beta1, t));
    auto vh = v / (1 - std::pow(o.beta2, t));
    ref = ref - lr * mh / (vh.sqrt() + o.eps);
  }
  EXPECT_LE((p.detach() - ref).abs().max().item<double>(), 1e-13);
  EXPECT_EQ(opt.steps(), 3);
}

TEST(ScheduleTest, WarmupThenCosineAndLinearClosedForm) {
  OptimConfig o;
  o.lr = 1e-5;
  o.warmup_fraction = 0.05;
  o.min_lr_ratio = 0.1;
  auto s = Schedule::from_config(o, 100);
  EXPECT_EQ(s.warmup, 5);
  EXPECT_DOUBLE_EQ(s.lr(0), 1e-5 / 5);
  EXPECT_DOUBLE_EQ(s.lr(4), 1e-5);
  EXPECT_DOUBLE_EQ(s.lr(5), 1e-5);  // the first decay step is the peak
  const double pi = std::acos(-1.0);
  for (int64_t k : {17, 50, 80}) {
    const double p = static_cast<double>(k - 5) / 94.0;
    EXPECT_NEAR(s.lr(k), 1e-6 + 9e-6 * 0.5 * (1 + std::cos(pi * p)), 1e-20) << k;
  }
  EXPECT_NEAR(s.lr(99), 1e-6, 1e-20);  // the last step reaches the floor
  o.schedule = "linear";
  auto l = Schedule::from_config(o, 100);
  EXPECT_NEAR(l.lr(52), 1e-5 - 9e-6 * 47.0 / 94.0, 1e-20);
  o.schedule = "constant";
  o.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(Schedule::from_config(o, 100).lr(77), 1e-5);
}

TEST(CheckpointTest, RoundTripIsBitwise) {
  // FP32, as a CPU run checkpoints it (an HF checkpoint holds FP32 / BF16 / FP16).
  auto student = perturbed_student(9);
  student->to(torch::kFloat32);
  auto teacher = load64();
  teacher->to(torch::kFloat32);
  auto b = padded_random_batch({16, 16}, 16, teacher->config().vocab_size, 10);
  auto cfg = config(1.0, 0.0, 0.0);
  AdamW opt(student->hf_tensors(), cfg.optim);
  for (int i = 0; i < 2; ++i) train_step(student, &teacher, {b}, opt, {.lr = 1e-3, .config = &cfg});
  using namespace qad::checkpoint;
  TrainerState st;
  st.step = 2;
  st.tokens = 64;
  st.adam_steps = opt.steps();
  st.loader = {{"epoch", 0}, {"step", 2}};
  QuantizerSnapshot q;
  q.tensors = {{"model.layers.0.mlp.up_proj.input_quantizer._amax", torch::tensor(3.5f)}};
  q.meta = {{"quantized", true}};
  const auto dir = std::filesystem::temp_directory_path() / ("qad_ckpt_test_" + std::to_string(::getpid()));
  ::qad::remove_tree(dir);
  auto written = save_checkpoint(dir, st, student, opt.state(), q, 1);
  st.step = 3;
  auto second = save_checkpoint(dir, st, student, opt.state(), q, 1);  // keep = 1 removes the first
  EXPECT_FALSE(std::filesystem::exists(written));
  ASSERT_EQ(latest_checkpoint(dir), second);

  auto c = load_checkpoint(second);
  EXPECT_EQ(c.state.step, 3);
  EXPECT_EQ(c.state.adam_steps, 2);
  EXPECT_EQ(c.state.loader, st.loader);
  ASSERT_EQ(c.quant.tensors.size(), 1u);
  EXPECT_TRUE(qad::testing::same_bits(c.quant.tensors[0].second, q.tensors[0].second));
  auto fresh = load64();
  fresh->to(torch::kFloat32);
  load_model_tensors(fresh, c.model, "test");
  AdamW opt2(fresh->hf_tensors(), cfg.optim);
  opt2.load_state(c.optimizer, c.state.adam_steps);
  for (size_t i = 0; i < student->hf_tensors().size(); ++i) {
    EXPECT_TRUE(qad::testing::same_bits(fresh->hf_tensors()[i].second, student->hf_tensors()[i].second));
  }
  auto s1 = opt.state(), s2 = opt2.state();
  ASSERT_EQ(s1.size(), s2.size());
  for (size_t i = 0; i < s1.size(); ++i) EXPECT_TRUE(qad::testing::same_bits(s1[i].second, s2[i].second)) << s1[i].first;
  // One more identical step on each gives identical weights.
  train_step(student, &teacher, {b}, opt, {.lr = 1e-3, .config = &cfg});
  train_step(fresh, &teacher, {b}, opt2, {.lr = 1e-3, .config = &cfg});
  for (size_t i = 0; i < student->hf_tensors().size(); ++i) {
    EXPECT_TRUE(qad::testing::same_bits(fresh->hf_tensors()[i].second, student->hf_tensors()[i].second));
  }
  ::qad::remove_tree(dir);
}

}  // namespace
}  // namespace qad::train
