// The NCCL path of fully sharded training on one GPU (world size 1 over NCCL): `--zero 3` follows an ordinary
// one-process BF16 run on stories260K. Skips without CUDA.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "common/test_util.h"
#include "qad_process.h"
#include "stories_data.h"
#include "util/remove_tree.h"

namespace fs = std::filesystem;
using namespace qad::testing;

namespace {

TEST(FsdpGpu, OneShardedRankOverNcclFollowsOneProcess) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto root = fs::temp_directory_path() / ("qad_fsdp_gpu_" + std::to_string(::getpid()));
  ::qad::remove_tree(root);
  fs::create_directories(root);
  // Enough text for the validation split to hold a global batch of 64-token windows (200 stories of ~40 tokens,
  // a fifth of them held out).
  ASSERT_TRUE(prepare_stories(root, root / "data", 200, 3, 0.2));
  const auto model = stories_model();
  auto args = [&](const fs::path& out) {
    return std::vector<std::string>{"distill", "--method", "cka-qad", "--teacher", model.string(), "--data",
                                    (root / "data").string(), "--out", out.string(), "--device", "cuda", "--steps", "10",
                                    "--batch-size", "4", "--seq-len", "64", "--lr", "3e-3", "--valid-every", "0",
                                    "--valid-batches", "1", "--checkpoint-every", "5", "--calib-batches", "2",
                                    "--activation-checkpointing", "--set", "run.export_nvfp4=false",
                                    "--set", "data.valid_fraction=0.2"};
  };
  auto plain = args(root / "plain"), sharded = args(root / "fsdp");
  sharded.insert(sharded.end(), {"--zero", "3"});
  ASSERT_TRUE(exited_ok(wait_for(spawn(plain, root / "plain.log", {}), 300))) << slurp(root / "plain.log");
  ASSERT_TRUE(exited_ok(wait_for(spawn(sharded, root / "fsdp.log", {}), 300))) << slurp(root / "fsdp.log");
  EXPECT_NE(slurp(root / "fsdp.log").find("1 ranks over nccl, fully sharded"), std::string::npos)
      << slurp(root / "fsdp.log");
  const auto a = curve(root / "plain"), b = curve(root / "fsdp");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  // Step 1 computes everything from the same weights: the loss agrees to FP32 rounding, the gradient norm to its
  // summation order (the ordinary run's fused norm kernel, FsdpAdamW's slices). From then on the two runs are two
  // implementations of the update (the fused AdamW kernel; FsdpAdamW's tensor ops), which differ in the last bit of
  // some FP32 masters; with BF16 weights and an NVFP4 student that moves weights across rounding boundaries, and the
  // curves separate by percents within a few steps (measured on the H200: 3 % and 7 % at steps 6 and 8; docs/dist.md).
  // A wrong shard, a missed reduction or a stale gathered layer moves step 2 by far more than 1e-3.
  EXPECT_NEAR(b.at(1), a.at(1), 1e-5 * std::abs(a.at(1)));
  EXPECT_NEAR(b.at(2), a.at(2), 1e-3 * std::abs(a.at(2)));
  const auto ga = curve(root / "plain", "grad_norm"), gb = curve(root / "fsdp", "grad_norm");
  EXPECT_NEAR(gb.at(1), ga.at(1), 1e-4 * ga.at(1));
  // Both stay finite and end alike (the last steps' mean loss; a broken sharded update ends far apart).
  auto mean = [](const std::map<int64_t, double>& c, int64_t from, int64_t to) {
    double sum = 0;
    for (int64_t s = from; s <= to; ++s) sum += c.at(s);
    return sum / static_cast<double>(to - from + 1);
  };
  for (const auto* c : {&a, &b}) {
    for (const auto& [s, v] : *c) EXPECT_TRUE(std::isfinite(v)) << "step " << s;
  }
  EXPECT_NEAR(mean(b, 8, 10), mean(a, 8, 10), 0.2 * mean(a, 8, 10)) << "the two runs train alike";
  ::qad::remove_tree(root);
}

}  // namespace
