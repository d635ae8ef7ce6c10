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
#include "util/remove_tree.h"

namespace fs = std::filesystem;
using namespace qad::testing;

namespace {

TEST(FsdpGpu, OneShardedRankOverNcclFollowsOneProcess) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto root = fs::temp_directory_path() / ("qad_fsdp_gpu_" + std::to_string(::getpid()));
  ::qad::remove_tree(root);
  fs::create_directories(root);
  {
    // Enough text for the validation split to hold a global batch of 64-token windows (200 stories of ~40 tokens,
    // a fifth of them held out).
    std::ofstream f(root / "stories.jsonl");
    std::mt19937 rng(3);
    const std::vector<std::string> names = {"Lily", "Tom", "Sue", "Ben", "Mia", "Max"};
    const std::vector<std::string> things = {"ball", "cat", "tree", "cake", "boat", "dog", "flower"};
    for (int d = 0; d < 200; ++d) {
      auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
      const std::string a = pick(names), b = pick(names), t = pick(things);
      f << "{\"text\": \"Once upon a time, " << a << " had a big " << t << ". One day, " << a << " saw " << b
        << " in the park. " << b << " smiled and they played with the " << t << " all day.\"}\n";
    }
  }
  const auto model = shared_dir() / "models/stories260K";
  ASSERT_TRUE(exited_ok(wait_for(spawn({"data", "prepare", "--tokenizer", model.string(), "--input",
                                        (root / "stories.jsonl").string(), "--out", (root / "data").string(),
                                        "--valid-fraction", "0.2", "--bos", "never"}, root / "prepare.log", {}), 120)))
      << slurp(root / "prepare.log");
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
  // BF16 weights: the fused AdamW of the ordinary run and FsdpAdamW's update round alike, but the gradient
  // summation order differs; a few BF16 ulps of the loss.
  for (const auto& [s, v] : a) EXPECT_NEAR(b.at(s), v, 2e-2 * std::abs(v)) << "step " << s;
  ::qad::remove_tree(root);
}

}  // namespace
