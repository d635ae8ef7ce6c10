// The offloaded AdamW against AdamW's fused update on the CPU, where the "device" slots and the host state are both
// host memory and the kernel is its C++ reference: the same bits for BF16 and FP32 models, chunks that cut through
// tensors, parameters without a gradient, clipping scales, skipped steps, the host-side step, and checkpoints that
// move between the two optimizers in both directions.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/test_util.h"
#include "train/offload_adamw.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace qad::train {
namespace {

using qad::testing::same_bits;
using qad::testing::seeded_generator;

torch::Tensor f32(double x) { return torch::full({}, x, torch::kFloat32); }

OptimConfig options() {
  OptimConfig o;
  o.weight_decay = 0.1;
  o.beta1 = 0.85;
  o.beta2 = 0.95;
  o.eps = 1e-7;
  return o;
}

// Tensors of awkward sizes (the 1000-element chunks below cut through them); "frozen" never gets a gradient.
NamedTensors make_params(uint64_t salt, torch::ScalarType dtype) {
  auto gen = seeded_generator(salt);
  NamedTensors p;
  for (auto [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"w1", {37, 29}}, {"bias", {5}}, {"frozen", {3}}, {"w2", {64, 48}}, {"norm", {11}}}) {
    p.emplace_back(name, torch::randn(shape, gen).to(dtype));
  }
  return p;
}

NamedTensors clone(const NamedTensors& p) {
  NamedTensors out;
  for (const auto& [n, t] : p) out.emplace_back(n, t.detach().clone());
  return out;
}

void set_grads(NamedTensors& a, NamedTensors& b, torch::Generator& gen) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].first == "frozen") continue;
    auto g = (torch::randn(a[i].second.sizes(), gen) * 1e-2).to(a[i].second.scalar_type());
    a[i].second.mutable_grad() = g.clone();
    b[i].second.mutable_grad() = g.clone();
  }
}

void expect_same(const NamedTensors& a, const NamedTensors& b, const std::string& when) {
  ASSERT_EQ(a.size(), b.size()) << when;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first) << when;
    EXPECT_TRUE(same_bits(a[i].second.detach(), b[i].second.detach())) << when << ": " << a[i].first;
  }
}

class OffloadAdamWTest : public ::testing::TestWithParam<torch::ScalarType> {};

TEST_P(OffloadAdamWTest, GivesAdamWsFusedUpdateBitForBit) {
  const auto dtype = GetParam();
  auto pa = make_params(1, dtype), pb = clone(make_params(1, dtype));
  AdamW plain(pa, options());
  plain.set_fused(true);
  OffloadAdamW off(pb, options(), {.chunk_elements = 1000, .slots = 2});
  EXPECT_EQ(off.host_bytes(), 12 * (37 * 29 + 5 + 3 + 64 * 48 + 11));
  EXPECT_EQ(off.device_bytes(), 2 * 3 * 1000 * 4);
  auto gen = seeded_generator(2);
  const std::vector<double> scales = {1.0, 0.25, 1.0, 0.5};
  for (size_t t = 0; t < scales.size(); ++t) {
    set_grads(pa, pb, gen);
    EXPECT_EQ(off.grad_norm(), plain.grad_norm());
    EXPECT_TRUE(same_bits(off.grad_norm_tensor(), plain.grad_norm_tensor()));
    const double lr = 1e-3 * static_cast<double>(t + 1);
    plain.step_on_device(lr, f32(scales[t]), f32(1));
    off.step_on_device(lr, f32(scales[t]), f32(1));
    expect_same(pa, pb, "step " + std::to_string(t + 1));
    plain.zero_grad();
    off.zero_grad();
  }
  // A skipped step writes nothing; the count is taken back as train_step does.
  set_grads(pa, pb, gen);
  const auto before = clone(pb);
  off.step_on_device(1e-3, f32(1), f32(0));
  off.cancel_step();
  expect_same(pb, before, "skipped step");
  EXPECT_EQ(off.steps(), 4);
  // Overlapped steps (the trainer's): a skipped step, and the next one queued before it is read. Its flag, 0, makes
  // that update use step 5's scalars on both optimizers (OffloadAdamW passes it on as AdamW does); the skipped
  // step's count is given back after.
  plain.zero_grad();
  off.zero_grad();
  set_grads(pa, pb, gen);
  plain.step_on_device(1e-3, f32(1), f32(0));
  off.step_on_device(1e-3, f32(1), f32(0));
  plain.zero_grad();
  off.zero_grad();
  set_grads(pa, pb, gen);
  plain.step_on_device(1.5e-3, f32(1), f32(1), f32(0));
  off.step_on_device(1.5e-3, f32(1), f32(1), f32(0));
  plain.cancel_step();
  off.cancel_step();
  expect_same(pa, pb, "the step after a skipped one, queued before it was read");
  EXPECT_EQ(off.steps(), 5);
  // The host-side step (data parallel without ZeRO): clip on the host, then step(lr).
  plain.scale_grads(0.5);
  off.scale_grads(0.5);
  plain.step_on_device(2e-3, f32(1), f32(1));
  off.step(2e-3);
  expect_same(pa, pb, "host-side step");
  expect_same(plain.state(), off.state(), "state");
  EXPECT_EQ(off.steps(), plain.steps());
  EXPECT_TRUE(pb[2].second.equal(make_params(1, dtype)[2].second));  // no gradient: untouched
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OffloadAdamWTest, ::testing::Values(torch::kBFloat16, torch::kFloat32),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

TEST(OffloadAdamWCheckpoint, StateMovesBetweenAdamWAndOffloadBothWays) {
  auto gen = seeded_generator(3);
  auto pa = make_params(4, torch::kBFloat16), pb = clone(pa);
  AdamW plain(pa, options());
  plain.set_fused(true);
  OffloadAdamW off(pb, options(), {.chunk_elements = 777, .slots = 3});
  for (int t = 0; t < 2; ++t) {
    set_grads(pa, pb, gen);
    plain.step_on_device(1e-3, f32(1), f32(1));
    off.step_on_device(1e-3, f32(1), f32(1));
  }
  // Resume each optimizer's checkpoint in the other kind, on fresh copies of the weights.
  auto pc = clone(pb), pd = clone(pa);
  AdamW from_off(pc, options());
  from_off.set_fused(true);
  from_off.load_state(off.state(), off.steps());
  OffloadAdamW from_plain(pd, options(), {.chunk_elements = 500, .slots = 2});
  from_plain.load_state(plain.state(), plain.steps());
  for (int t = 0; t < 2; ++t) {
    for (auto* ps : {&pa, &pb, &pc, &pd}) {
      auto gi = torch::make_generator<at::CPUGeneratorImpl>(100 + t);
      for (auto& [n, p] : *ps) {
        if (n != "frozen") p.mutable_grad() = (torch::randn(p.sizes(), gi) * 1e-2).to(p.scalar_type());
      }
    }
    for (Optimizer* o : std::vector<Optimizer*>{&plain, &off, &from_off, &from_plain}) {
      o->step_on_device(1e-3, f32(1), f32(1));
    }
  }
  expect_same(pa, pb, "plain vs offload");
  expect_same(pa, pc, "resumed from the offload checkpoint");
  expect_same(pa, pd, "offload resumed from AdamW's checkpoint");
  expect_same(plain.state(), from_plain.state(), "state");
}

TEST(OffloadAdamWErrors, RefusesFp64AndMismatchedState) {
  NamedTensors p64 = {{"w", torch::zeros({4, 4}, torch::kFloat64)}};
  try {
    OffloadAdamW o(p64, options());
    FAIL() << "FP64 parameters were accepted";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w' is Double"), std::string::npos) << e.what();
  }
  auto p = make_params(5, torch::kBFloat16);
  OffloadAdamW o(p, options());
  auto state = o.state();
  state[0].second = torch::zeros({2, 2});
  try {
    o.load_state(state, 1);
    FAIL() << "a state of the wrong shape was accepted";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'master.w1' has shape [2, 2]"), std::string::npos) << e.what();
  }
}

TEST(OffloadAdamWFactory, MakeAdamwFollowsOptimOffload) {
  auto o = options();
  auto p = make_params(6, torch::kFloat32);
  EXPECT_NE(dynamic_cast<AdamW*>(make_adamw(p, o).get()), nullptr);
  o.offload = "optimizer";
  EXPECT_NE(dynamic_cast<OffloadAdamW*>(make_adamw(p, o).get()), nullptr);
  o.offload = "gpu";
  EXPECT_THROW(make_adamw(p, o), qad::Error);
}

}  // namespace
}  // namespace qad::train
