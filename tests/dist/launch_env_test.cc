// The launch environment: torchrun and SLURM variables, and the errors for incomplete or inconsistent ones.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "dist/launch_env.h"
#include "util/error.h"

namespace {

using qad::dist::parse_launch_env;

qad::dist::EnvLookup env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& k) -> std::optional<std::string> {
    auto it = vars.find(k);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string error_of(std::map<std::string, std::string> vars) {
  try {
    parse_launch_env(env(std::move(vars)));
  } catch (const qad::Error& e) {
    return e.what();
  }
  return "";
}

TEST(LaunchEnv, NothingSetIsOneProcess) {
  auto e = parse_launch_env(env({}));
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.source, "none");
}

TEST(LaunchEnv, Torchrun) {
  auto e = parse_launch_env(env({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "node7"},
                                 {"MASTER_PORT", "29511"}, {"SLURM_PROCID", "0"}}));
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "node7");
  EXPECT_EQ(e.master_port, 29511);
  EXPECT_EQ(e.source, "torchrun");  // RANK wins over SLURM's variables
}

TEST(LaunchEnv, Slurm) {
  auto e = parse_launch_env(env({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "5"},
                                 {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29500"}}));
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 16);
  EXPECT_EQ(e.local_rank, 5);
  EXPECT_EQ(e.source, "slurm");
}

TEST(LaunchEnv, ErrorsNameTheVariableAndTheFix) {
  EXPECT_NE(error_of({{"RANK", "0"}}).find("WORLD_SIZE is not"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "a"},
                      {"MASTER_PORT", "1"}}).find("RANK=2 is outside [0, WORLD_SIZE=2)"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}}).find("RANK=x: not an integer"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}}).find("needs MASTER_ADDR"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}})
                .find("LOCAL_RANK is not set"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "h"},
                      {"MASTER_PORT", "70000"}}).find("MASTER_PORT=70000: must be in [1, 65535]"), std::string::npos);
  EXPECT_NE(error_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}}).find("scontrol show hostnames"),
            std::string::npos);
  EXPECT_NE(error_of({{"SLURM_PROCID", "1"}}).find("SLURM_NTASKS is not"), std::string::npos);
  EXPECT_EQ(error_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}}), "");  // one rank needs no rendezvous
}

}  // namespace
