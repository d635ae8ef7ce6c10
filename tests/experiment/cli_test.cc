// `qad experiment` through its command-line file (src/cli/cmd_experiment.cc is compiled into this test, since
// the qad binary links LibTorch and this suite does not): --dry-run prints every cell's exact command lines
// and runs nothing; --summarize-only writes the summary from the cells on disk.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "experiment_test_util.h"
#include "util/error.h"

namespace qad::experiment {
namespace {
namespace fs = std::filesystem;

// Parses `args` with the registered `experiment` subcommand, as main() does.
void run_cli(std::vector<std::string> args) {
  CLI::App app;
  for (auto& e : ::qad::cli::command_registry()) e.fn(app);
  args.insert(args.begin(), "qad");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
}

TEST(ExperimentCli, DryRunPrintsEveryCellAndRunsNothing) {
  const auto dir = testing::fresh_dir("cli_dry");
  testing::write_text(dir / "exp.yaml", "teacher: T\ndata: D\ntasks: t.jsonl\nmethods: [qad, cka-qad]\nseeds: 2\n");
  ::testing::internal::CaptureStdout();
  run_cli({"experiment", "--config", (dir / "exp.yaml").string(), "--out", (dir / "out").string(), "--dry-run"});
  std::fflush(stdout);
  const std::string printed = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(printed.find("exp: 4 cells = 2 seed(s) × 1 variant(s) × 2 method(s)"), std::string::npos) << printed;
  EXPECT_NE(printed.find("cka-qad__seed2\n  "), std::string::npos) << printed;
  EXPECT_NE(printed.find(" distill --method cka-qad --teacher T --data D --name cka-qad__seed2 --set run.seed=2 "
                         "--set data.seed=2 --out " + (dir / "out").string() + "/cells/cka-qad__seed2/run\n"),
            std::string::npos)
      << printed;
  EXPECT_NE(printed.find(" eval --model " + (dir / "out").string() + "/cells/qad__seed1/run/export/nvfp4 --tasks "
                         "t.jsonl --json\n"),
            std::string::npos)
      << printed;
  EXPECT_NE(printed.find("paired difference: cka-qad - qad per seed"), std::string::npos) << printed;
  EXPECT_FALSE(fs::exists(dir / "out"));
  ::qad::remove_tree(dir);
}

TEST(ExperimentCli, SummarizeOnlyWritesTheSummaryAndNamesFailedCells) {
  const auto dir = testing::fresh_dir("cli_summary");
  testing::write_text(dir / "exp.yaml", "teacher: T\ndata: D\nmethods: [qad]\nseeds: 2\n");
  EXPECT_THROW(run_cli({"experiment", "--config", (dir / "exp.yaml").string(), "--out", (dir / "out").string(),
                        "--summarize-only"}),
               Error);  // no experiment there yet
  testing::write_text(dir / "out" / "cells" / "qad__seed1" / "run" / "final_metrics.json", R"({"kl": 0.25})");
  testing::write_text(dir / "out" / "cells" / "qad__seed2" / "status.json",
                      R"({"state": "failed", "exit": "qad distill exited with status 1"})");
  try {
    ::testing::internal::CaptureStdout();
    run_cli({"experiment", "--config", (dir / "exp.yaml").string(), "--out", (dir / "out").string(),
             "--summarize-only"});
    ::testing::internal::GetCapturedStdout();
    FAIL() << "a failed cell is an error";
  } catch (const Error& e) {
    const std::string printed = ::testing::internal::GetCapturedStdout();
    EXPECT_NE(std::string(e.what()).find("1 of 2 cells failed (qad__seed2)"), std::string::npos) << e.what();
    EXPECT_NE(printed.find("1 of 2 cells finished"), std::string::npos) << printed;
  }
  EXPECT_NE(testing::read_text(dir / "out" / "summary.md").find("| qad | 1 | 0.25 |"), std::string::npos);
  ::qad::remove_tree(dir);
}

TEST(ExperimentCli, BadGpuListIsAnError) {
  const auto dir = testing::fresh_dir("cli_gpus");
  testing::write_text(dir / "exp.yaml", "teacher: T\ndata: D\nmethods: [qad]\n");
  for (const char* gpus : {"0,,1", "a", "0,0"}) {
    EXPECT_THROW(run_cli({"experiment", "--config", (dir / "exp.yaml").string(), "--out", (dir / "out").string(),
                          "--gpus", gpus, "--dry-run"}),
                 Error)
        << gpus;
  }
  ::qad::remove_tree(dir);
}

}  // namespace
}  // namespace qad::experiment
