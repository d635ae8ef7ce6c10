// The killed-rank check both multi-process suites run (ZeRO-1 / unsharded and fully sharded): two ranks launched
// torchrun-style (no local launcher to stop rank 0), rank 1 SIGKILLed after step 2's update by the run's own
// --debug-kill-at-step; rank 0 must stop within --dist-timeout with a clear error, and the last checkpoint must be
// complete and loadable, with no final metrics written.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors_torch.h"
#include "qad_process.h"

namespace qad::testing {

// `a`: a 2-rank `qad distill` command line of at least 3 steps writing to `out`; logs go to root/rank{0,1}.log.
inline void expect_a_killed_rank_stops_the_other(std::vector<std::string> a, const std::filesystem::path& root,
                                                 const std::filesystem::path& out) {
  namespace fs = std::filesystem;
  set_flag(a, "--checkpoint-every", "1");
  set_flag(a, "--dist-timeout", "5");
  a.insert(a.end(), {"--debug-kill-at-step", "2", "--debug-kill-rank", "1"});
  const std::string port = std::to_string(free_port());
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r) {
    pids.push_back(spawn(a, root / ("rank" + std::to_string(r) + ".log"),
                         {{"RANK", std::to_string(r)}, {"LOCAL_RANK", std::to_string(r)}, {"WORLD_SIZE", "2"},
                          {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", port}}));
  }
  bool hung = false;
  const int st1 = wait_for(pids[1], 120);
  const int st0 = wait_for(pids[0], 60, &hung);
  EXPECT_TRUE(WIFSIGNALED(st1) && WTERMSIG(st1) == SIGKILL);
  EXPECT_FALSE(hung) << "rank 0 did not stop after rank 1 died";
  EXPECT_TRUE(WIFEXITED(st0) && WEXITSTATUS(st0) == 1);
  const auto log0 = slurp(root / "rank0.log");
  EXPECT_NE(log0.find("qad: error: rank 0/2:"), std::string::npos) << log0;
  EXPECT_NE(log0.find("Another rank has probably died"), std::string::npos) << log0;
  const auto latest = slurp(out / "checkpoints/latest");
  ASSERT_FALSE(latest.empty());
  const auto dir = out / "checkpoints" / latest.substr(0, latest.find('\n'));
  EXPECT_TRUE(fs::exists(dir / "trainer_state.json"));
  EXPECT_FALSE(qad::io::read_tensors(dir / "optimizer.safetensors").empty());
  EXPECT_FALSE(qad::io::read_tensors(dir / "model/model.safetensors").empty());
  EXPECT_FALSE(fs::exists(out / "final_metrics.json"));
}

}  // namespace qad::testing
