// The offloaded AdamW on the GPU (page-locked host state, chunks streamed on side streams) against AdamW's fused
// update on the GPU, bit for bit: BF16 weights and every state tensor, over steps with clipping scales and a skipped
// step, with many small chunks (the pipeline's slots reused many times) and with the default 16 M-element chunks
// over tensors larger than a chunk; and checkpoints moving between the two. Skips without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/test_util.h"
#include "train/offload_adamw.h"
#include "train/optimizer.h"

namespace qad::train {
namespace {

using qad::testing::same_bits;
using qad::testing::seeded_generator;

NamedTensors cuda_params(const std::vector<std::vector<int64_t>>& shapes, uint64_t salt) {
  auto gen = seeded_generator(salt);
  NamedTensors p;
  for (size_t i = 0; i < shapes.size(); ++i) {
    p.emplace_back("t" + std::to_string(i), torch::randn(shapes[i], gen).to(torch::kBFloat16).cuda());
  }
  return p;
}

NamedTensors clone(const NamedTensors& p) {
  NamedTensors out;
  for (const auto& [n, t] : p) out.emplace_back(n, t.detach().clone());
  return out;
}

void run_and_compare(const std::vector<std::vector<int64_t>>& shapes, OffloadAdamW::Staging staging, uint64_t salt) {
  OptimConfig o;
  o.weight_decay = 0.05;
  auto pa = cuda_params(shapes, salt), pb = clone(pa);
  AdamW plain(pa, o);
  ASSERT_TRUE(plain.fused());
  OffloadAdamW off(pb, o, staging);
  const auto f32 = [](double x) { return torch::full({}, x, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA)); };
  const std::vector<std::pair<double, double>> steps = {{1, 1}, {0.5, 1}, {1, 0}, {0.25, 1}};  // (scale, apply)
  for (size_t t = 0; t < steps.size(); ++t) {
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(salt * 100 + t);
    for (size_t i = 0; i + 1 < pa.size(); ++i) {  // the last tensor: no gradient
      auto g = (torch::randn(pa[i].second.sizes(), gen) * 1e-2).to(torch::kBFloat16).cuda();
      pa[i].second.mutable_grad() = g.clone();
      pb[i].second.mutable_grad() = g.clone();
    }
    EXPECT_TRUE(same_bits(off.grad_norm_tensor(), plain.grad_norm_tensor()));
    plain.step_on_device(1e-3, f32(steps[t].first), f32(steps[t].second));
    off.step_on_device(1e-3, f32(steps[t].first), f32(steps[t].second));
    if (steps[t].second == 0) {
      plain.cancel_step();
      off.cancel_step();
    }
    plain.zero_grad();
    off.zero_grad();
    for (size_t i = 0; i < pa.size(); ++i) {
      EXPECT_TRUE(same_bits(pa[i].second, pb[i].second)) << "step " << t << ", " << pa[i].first;
    }
  }
  EXPECT_GT(off.last_update_ms(), 0.0);
  const auto sa = plain.state(), sb = off.state();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sb[i].first);
    EXPECT_TRUE(same_bits(sa[i].second.cpu(), sb[i].second)) << sa[i].first;
  }
  // The offload checkpoint resumes in a plain AdamW (and the reverse) with the same next step.
  auto pc = clone(pb), pd = clone(pa);
  AdamW from_off(pc, o);
  from_off.load_state(off.state(), off.steps());
  OffloadAdamW from_plain(pd, o, staging);
  from_plain.load_state(plain.state(), plain.steps());
  for (auto* ps : {&pa, &pb, &pc, &pd}) {
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(salt * 100 + 99);
    for (auto& [n, p] : *ps) p.mutable_grad() = (torch::randn(p.sizes(), gen) * 1e-2).to(torch::kBFloat16).cuda();
  }
  for (Optimizer* opt : std::vector<Optimizer*>{&plain, &off, &from_off, &from_plain}) {
    opt->step_on_device(2e-3, f32(1), f32(1));
  }
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(same_bits(pa[i].second, pb[i].second)) << "after resume: " << pa[i].first;
    EXPECT_TRUE(same_bits(pa[i].second, pc[i].second)) << "AdamW from the offload state: " << pa[i].first;
    EXPECT_TRUE(same_bits(pa[i].second, pd[i].second)) << "offload from AdamW's state: " << pa[i].first;
  }
}

TEST(OffloadAdamWCuda, ManySmallChunksGiveAdamWsBits) {
  QAD_REQUIRE_GPU();
  run_and_compare({{300, 257}, {17}, {1000, 64}, {5}, {33, 33}}, {.chunk_elements = 10007, .slots = 2}, 1);
  run_and_compare({{300, 257}, {17}, {1000, 64}, {5}, {33, 33}}, {.chunk_elements = 4096, .slots = 3}, 2);
}

TEST(OffloadAdamWCuda, DefaultChunksOverTensorsLargerThanAChunk) {
  QAD_REQUIRE_GPU();
  run_and_compare({{5000, 4096}, {4096}, {3001, 4096}, {7}}, {}, 3);  // 32.8 M elements: three 16 M chunks
}

}  // namespace
}  // namespace qad::train
