// The fused AdamW's CUDA kernel against its C++ reference, bit for bit, on poisoned outputs; the skip flag; the
// multi-tensor gradient norm. Skips without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/test_util.h"
#include "train/fused_adamw.h"

namespace qad::train {
namespace {

using qad::testing::same_bits;
using qad::testing::seeded_generator;

TEST(FusedAdamWCuda, KernelEqualsReferenceBitForBit) {
  QAD_REQUIRE_GPU();
  auto gen = seeded_generator(11);
  OptimConfig o;
  o.weight_decay = 0.05;
  const auto s = adamw_scalars(3e-4, o, 7);
  // Sizes around the chunk (16384) and odd tails; BF16 and FP32 gradients; with and without a model copy.
  const std::vector<int64_t> sizes = {1, 17, 16384, 16385, 70001};
  std::vector<AdamWTensors> cpu, gpu;
  std::vector<torch::Tensor> cpu_params, gpu_params;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t n = sizes[i];
    auto master = torch::randn({n}, gen), m = torch::randn({n}, gen) * 1e-3, v = torch::rand({n}, gen) * 1e-6;
    auto grad = (torch::randn({n}, gen) * 1e-2).to(i % 2 ? torch::kFloat32 : torch::kBFloat16);
    const bool with_param = i != 1;
    auto param = with_param ? torch::full({n}, std::nan(""), torch::kBFloat16) : torch::Tensor();  // poisoned
    cpu.push_back({master.clone(), m.clone(), v.clone(), grad, with_param ? param.clone() : torch::Tensor(), i % 3 == 0});
    gpu.push_back({master.cuda(), m.cuda(), v.cuda(), grad.cuda(), with_param ? param.cuda() : torch::Tensor(),
                   i % 3 == 0});
  }
  auto scale = torch::full({}, 0.75f), apply = torch::full({}, 1.0f);
  fused_adamw_reference_(cpu, s, scale, apply);
  fused_adamw_(gpu, s, scale.cuda(), apply.cuda());
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_TRUE(same_bits(gpu[i].master.cpu(), cpu[i].master)) << "tensor " << i;
    EXPECT_TRUE(same_bits(gpu[i].exp_avg.cpu(), cpu[i].exp_avg)) << "tensor " << i;
    EXPECT_TRUE(same_bits(gpu[i].exp_avg_sq.cpu(), cpu[i].exp_avg_sq)) << "tensor " << i;
    if (cpu[i].param.defined()) {
      EXPECT_TRUE(same_bits(gpu[i].param.cpu(), cpu[i].param)) << "tensor " << i;
    }
  }
  // A skipped step leaves every buffer as it was.
  auto before = gpu[4].master.clone();
  fused_adamw_(gpu, s, scale.cuda(), torch::zeros({}, torch::kFloat32).cuda());
  EXPECT_TRUE(same_bits(gpu[4].master.cpu(), before.cpu()));
}

// An update queued before the previous step was read (the trainer's overlapped steps): the kernel takes the
// scalars of step t where the previous step's flag is 1 and those of step t - 1 where it is 0, as the reference
// does; the two choices give different bits (the bias corrections differ), so a kernel that ignored the flag fails.
TEST(FusedAdamWCuda, PreviousStepsFlagPicksTheScalarsOnTheDevice) {
  QAD_REQUIRE_GPU();
  auto gen = seeded_generator(13);
  OptimConfig o;
  const int64_t n = 40000;
  auto master = torch::randn({n}, gen), m = torch::randn({n}, gen) * 1e-3, v = torch::rand({n}, gen) * 1e-6;
  auto grad = (torch::randn({n}, gen) * 1e-2).to(torch::kBFloat16);
  const auto one = torch::full({}, 1.0f);
  std::vector<torch::Tensor> results;
  for (const float previous_applied : {1.0f, 0.0f}) {
    const auto previous = previous_step(1e-3, o, 3, torch::full({}, previous_applied));
    ASSERT_TRUE(previous.has_value());
    auto poison = [&] { return torch::full({n}, std::nan(""), torch::kBFloat16); };
    std::vector<AdamWTensors> cpu = {{master.clone(), m.clone(), v.clone(), grad, poison(), false}};
    std::vector<AdamWTensors> gpu = {{master.cuda(), m.cuda(), v.cuda(), grad.cuda(), poison().cuda(), false}};
    fused_adamw_reference_(cpu, adamw_scalars(1e-3, o, 3), one, one, &*previous);
    const PreviousStep on_device{previous->previous_apply.cuda(), previous->if_skipped};
    fused_adamw_(gpu, adamw_scalars(1e-3, o, 3), one.cuda(), one.cuda(), &on_device);
    EXPECT_TRUE(same_bits(gpu[0].master.cpu(), cpu[0].master)) << "previous applied " << previous_applied;
    EXPECT_TRUE(same_bits(gpu[0].param.cpu(), cpu[0].param)) << "previous applied " << previous_applied;
    // The reference itself: the plain update with step t's scalars, or with step t - 1's.
    std::vector<AdamWTensors> plain = {{master.clone(), m.clone(), v.clone(), grad, torch::Tensor(), false}};
    fused_adamw_reference_(plain, adamw_scalars(1e-3, o, previous_applied != 0 ? 3 : 2), one, one);
    EXPECT_TRUE(same_bits(plain[0].master, cpu[0].master)) << "previous applied " << previous_applied;
    results.push_back(cpu[0].master);
  }
  EXPECT_FALSE(same_bits(results[0], results[1]));
}

TEST(FusedAdamWCuda, GradSquareSumMatchesReference) {
  QAD_REQUIRE_GPU();
  auto gen = seeded_generator(12);
  std::vector<torch::Tensor> grads = {torch::randn({100000}, gen).to(torch::kBFloat16), torch::randn({3, 7}, gen),
                                      torch::randn({16384}, gen)};
  std::vector<torch::Tensor> on_gpu;
  for (const auto& g : grads) on_gpu.push_back(g.cuda());
  const double want = grad_square_sum_reference(grads).item<double>();
  const double got = grad_square_sum(on_gpu).item<double>();
  // Same FP32 partials (the reference follows the kernel's summation order); only their FP64 sum's order differs.
  EXPECT_NEAR(got, want, 1e-12 * want);
  EXPECT_TRUE(grad_square_sum(on_gpu).is_cuda());
}

}  // namespace
}  // namespace qad::train
