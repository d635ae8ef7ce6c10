// The grid runner with a fake qad (experiment_test_util.h): every cell runs; a grid killed mid-cell resumes
// that cell with --resume and never reruns a finished one (the fake's argv log shows it); a failing cell is
// recorded and the rest still run; a forwarded SIGTERM leaves interrupted cells to resume; one cell per GPU;
// the summary of the fake's numbers equals hand-computed statistics.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <stdexcept>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "experiment/cell_state.h"
#include "experiment/grid.h"
#include "experiment/out_dir_lock.h"
#include "experiment/runner.h"
#include "experiment/summary.h"
#include "experiment/summary_files.h"
#include "experiment_test_util.h"
#include "util/error.h"

namespace qad::experiment {
namespace {
namespace fs = std::filesystem;
using testing::invocations;
using testing::read_lines;
using testing::read_text;

const char* kGrid = R"(
name: fake-study
teacher: T
data: D.jsonl
tasks: tasks.jsonl
base: {run.steps: 2}
methods: [qad, cka-qad]
seeds: 3
eval: {max-items: 5}
)";

// Cells in the grid's (seed-major) order.
const std::vector<std::string> kCells = {"qad__seed1", "cka-qad__seed1", "qad__seed2",
                                         "cka-qad__seed2", "qad__seed3", "cka-qad__seed3"};

class Runner : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = testing::fresh_dir(std::string("runner_") + info->name());
    fake_ = testing::write_fake_qad(dir_);
    log_ = dir_ / "argv.log";
    ::setenv("FAKE_QAD_LOG", log_.c_str(), 1);
    for (const char* v : {"FAKE_QAD_FAIL", "FAKE_QAD_KILL_RUNNER", "FAKE_QAD_TERM_RUNNER"}) ::unsetenv(v);
    grid_ = parse_grid(kGrid, "exp.yaml");
    messages_ = std::fopen((dir_ / "messages.txt").c_str(), "a");
    ASSERT_NE(messages_, nullptr);
  }
  void TearDown() override {
    std::fclose(messages_);
    for (const char* v : {"FAKE_QAD_LOG", "FAKE_QAD_FAIL", "FAKE_QAD_KILL_RUNNER", "FAKE_QAD_TERM_RUNNER"}) {
      ::unsetenv(v);
    }
    if (!HasFailure()) ::qad::remove_tree(dir_);
  }

  RunnerOptions options() const {
    RunnerOptions o;
    o.qad_executable = fake_.string();
    o.out = dir_ / "out";
    o.poll_seconds = 0.01;
    o.messages = messages_;
    return o;
  }

  // Runs the grid in a forked process (the fake may kill it) and returns its wait status; the child exits 0
  // when `check` holds for its result.
  int run_in_child(const std::function<bool(const GridRunResult&)>& check) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      bool ok = false;
      try {
        ok = check(run_grid(grid_, options()));
      } catch (...) {
      }
      std::fflush(nullptr);
      ::_exit(ok ? 0 : 1);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
  }

  std::vector<std::string> log() const { return read_lines(log_); }
  size_t distills(const std::string& cell) const { return invocations(log(), "distill", cell).size(); }
  size_t evals(const std::string& cell) const { return invocations(log(), "eval", cell).size(); }
  CellPaths paths(const std::string& cell) const { return cell_paths(dir_ / "out", cell); }

  fs::path dir_, fake_, log_;
  Grid grid_;
  std::FILE* messages_ = nullptr;
};

TEST_F(Runner, RunsEveryCellOnceThenNothing) {
  const GridRunResult r = run_grid(grid_, options());
  EXPECT_EQ(r.stop_signal, 0);
  EXPECT_EQ(r.count(CellOutcome::kFinished), 6u);
  for (const auto& cell : kCells) {
    EXPECT_EQ(distills(cell), 1u) << cell;
    EXPECT_EQ(evals(cell), 1u) << cell;
    EXPECT_EQ(inspect_cell(paths(cell), true), CellProgress::kFinished) << cell;
    EXPECT_EQ(read_status(paths(cell))->value("state", ""), "finished") << cell;
  }
  const std::string out = (dir_ / "out").string();
  const auto d = invocations(log(), "distill", "cka-qad__seed2");
  EXPECT_EQ(d[0], "CVD= distill --method cka-qad --teacher T --data D.jsonl --name cka-qad__seed2 --set run.steps=2 "
                  "--set run.seed=2 --set data.seed=2 --out " + out + "/cells/cka-qad__seed2/run");
  const auto e = invocations(log(), "eval", "cka-qad__seed2");
  EXPECT_EQ(e[0], "CVD= eval --model " + out + "/cells/cka-qad__seed2/run/export/nvfp4 --tasks tasks.jsonl "
                  "--max-items 5 --json");
  // eval.json is qad eval's stdout; its stderr went to the cell's log.
  EXPECT_NE(read_text(paths("cka-qad__seed2").eval_json).find("\"accuracy\": 0.2"), std::string::npos);
  EXPECT_NE(read_text(paths("cka-qad__seed2").log).find("fake eval of"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_ / "out" / "grid.json"));
  const std::string messages = read_text(dir_ / "messages.txt");
  EXPECT_NE(messages.find("[6/6 finished]"), std::string::npos) << messages;
  EXPECT_NE(messages.find("ETA"), std::string::npos) << messages;

  const size_t lines = log().size();
  const GridRunResult again = run_grid(grid_, options());
  EXPECT_EQ(again.count(CellOutcome::kAlreadyFinished), 6u);
  EXPECT_EQ(log().size(), lines) << "a finished cell ran again";
}

TEST_F(Runner, AKilledGridResumesTheCellItKilledAndNeverRerunsAFinishedOne) {
  // The fake SIGKILLs the runner while training qad__seed2 (after its first checkpoint).
  ::setenv("FAKE_QAD_KILL_RUNNER", "qad__seed2", 1);
  const int status = run_in_child([](const GridRunResult&) { return true; });
  ::unsetenv("FAKE_QAD_KILL_RUNNER");
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the runner was not killed: " << status;
  EXPECT_EQ(distills("qad__seed1") + distills("cka-qad__seed1") + distills("qad__seed2"), 3u);
  EXPECT_EQ(distills("cka-qad__seed2"), 0u);
  EXPECT_EQ(inspect_cell(paths("qad__seed2"), true), CellProgress::kResume);
  const Summary after_kill = summarize(grid_, dir_ / "out");
  EXPECT_EQ(after_kill.cells[2].state, "interrupted") << "status.json says running, but no runner holds the lock";
  EXPECT_EQ(after_kill.count("finished"), 2u);

  const GridRunResult r = run_grid(grid_, options());
  EXPECT_EQ(r.outcomes, (std::vector<CellOutcome>{CellOutcome::kAlreadyFinished, CellOutcome::kAlreadyFinished,
                                                  CellOutcome::kFinished, CellOutcome::kFinished,
                                                  CellOutcome::kFinished, CellOutcome::kFinished}));
  for (const auto& cell : {"qad__seed1", "cka-qad__seed1"}) {
    EXPECT_EQ(distills(cell), 1u) << cell << " was rerun";
    EXPECT_EQ(evals(cell), 1u) << cell << " was evaluated again";
  }
  const auto killed = invocations(log(), "distill", "qad__seed2");
  ASSERT_EQ(killed.size(), 2u);
  EXPECT_EQ(killed[0].find("--resume"), std::string::npos);
  EXPECT_EQ(killed[1].substr(killed[1].size() - 8), "--resume") << killed[1];
  for (const auto& cell : {"cka-qad__seed2", "qad__seed3", "cka-qad__seed3"}) {
    const auto d = invocations(log(), "distill", cell);
    ASSERT_EQ(d.size(), 1u) << cell;
    EXPECT_EQ(d[0].find("--resume"), std::string::npos) << cell;
  }
  for (const auto& cell : kCells) EXPECT_EQ(inspect_cell(paths(cell), true), CellProgress::kFinished) << cell;
}

TEST_F(Runner, StartsFreshOrResumesByWhatIsOnDisk) {
  // cka-qad__seed3: a checkpoint → --resume. qad__seed3: a run that died before its first checkpoint → its
  // directory is cleared and the cell starts again. qad__seed1: trained, not evaluated → only qad eval.
  testing::write_text(paths("cka-qad__seed3").run_dir / "checkpoints" / "step-00000001" / "trainer_state.json", "{}");
  testing::write_text(paths("cka-qad__seed3").run_dir / "checkpoints" / "latest", "step-00000001\n");
  testing::write_text(paths("qad__seed3").run_dir / "run.json", "{}");
  testing::write_text(paths("qad__seed3").run_dir / "data" / "half-prepared", "x");
  testing::write_text(paths("qad__seed1").run_dir / "final_metrics.json", R"({"kl": 0.5})");
  // A `latest` that names a missing checkpoint is no checkpoint.
  testing::write_text(paths("qad__seed2").run_dir / "checkpoints" / "latest", "step-00000009\n");
  EXPECT_EQ(inspect_cell(paths("cka-qad__seed3"), true), CellProgress::kResume);
  EXPECT_EQ(inspect_cell(paths("qad__seed3"), true), CellProgress::kFresh);
  EXPECT_EQ(inspect_cell(paths("qad__seed1"), true), CellProgress::kNeedsEval);
  EXPECT_EQ(inspect_cell(paths("qad__seed1"), false), CellProgress::kFinished);
  EXPECT_EQ(inspect_cell(paths("qad__seed2"), true), CellProgress::kFresh);

  const GridRunResult r = run_grid(grid_, options());
  EXPECT_EQ(r.count(CellOutcome::kFinished), 6u);
  const auto resumed = invocations(log(), "distill", "cka-qad__seed3");
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_NE(resumed[0].find("--resume"), std::string::npos);
  for (const auto& cell : {"qad__seed2", "qad__seed3", "cka-qad__seed1"}) {
    const auto d = invocations(log(), "distill", cell);
    ASSERT_EQ(d.size(), 1u) << cell;
    EXPECT_EQ(d[0].find("--resume"), std::string::npos) << cell;
  }
  EXPECT_FALSE(fs::exists(paths("qad__seed3").run_dir / "data" / "half-prepared"));
  EXPECT_EQ(distills("qad__seed1"), 0u);
  EXPECT_EQ(evals("qad__seed1"), 1u);
}

TEST_F(Runner, AFailingCellIsRecordedAndTheOthersRun) {
  ::setenv("FAKE_QAD_FAIL", "cka-qad__seed1", 1);
  const GridRunResult r = run_grid(grid_, options());
  ::unsetenv("FAKE_QAD_FAIL");
  EXPECT_EQ(r.outcomes[1], CellOutcome::kFailed);
  EXPECT_EQ(r.count(CellOutcome::kFinished), 5u);
  const auto status = read_status(paths("cka-qad__seed1"));
  ASSERT_TRUE(status);
  EXPECT_EQ(status->value("state", ""), "failed");
  EXPECT_EQ(status->value("phase", ""), "distill");
  EXPECT_EQ(status->value("exit_code", 0), 3);
  EXPECT_EQ(status->value("exit", ""), "qad distill exited with status 3");
  const auto tail = (*status)["log_tail"].get<std::vector<std::string>>();
  ASSERT_FALSE(tail.empty());
  EXPECT_EQ(tail.back(), "fake: cannot load the teacher");
  const std::string messages = read_text(dir_ / "messages.txt");
  EXPECT_NE(messages.find("cka-qad__seed1 failed"), std::string::npos) << messages;
  EXPECT_NE(messages.find("| fake: cannot load the teacher"), std::string::npos) << messages;
  EXPECT_EQ(evals("cka-qad__seed1"), 0u);

  // Run again: the failed cell is retried, the finished ones are not.
  const GridRunResult again = run_grid(grid_, options());
  EXPECT_EQ(again.outcomes[1], CellOutcome::kFinished);
  EXPECT_EQ(again.count(CellOutcome::kAlreadyFinished), 5u);
  EXPECT_EQ(distills("cka-qad__seed1"), 2u);
  EXPECT_EQ(distills("qad__seed1"), 1u);
  EXPECT_EQ(read_status(paths("cka-qad__seed1"))->value("attempt", 0), 2);
}

TEST_F(Runner, ASignalIsForwardedAndTheInterruptedCellResumes) {
  // The fake sends SIGTERM to the runner while training cka-qad__seed1 and exits 143 when the runner
  // forwards it, as qad distill does after writing its checkpoint.
  ::setenv("FAKE_QAD_TERM_RUNNER", "cka-qad__seed1", 1);
  const int status = run_in_child([](const GridRunResult& r) {
    return r.stop_signal == SIGTERM && r.outcomes[0] == CellOutcome::kFinished &&
           r.outcomes[1] == CellOutcome::kInterrupted && r.count(CellOutcome::kNotRun) == 4;
  });
  ::unsetenv("FAKE_QAD_TERM_RUNNER");
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << "; messages:\n"
                                                             << read_text(dir_ / "messages.txt");
  EXPECT_NE(read_text(paths("cka-qad__seed1").log).find("fake: stopped by SIGTERM"), std::string::npos)
      << "the runner did not forward the signal";
  EXPECT_EQ(read_status(paths("cka-qad__seed1"))->value("state", ""), "interrupted");
  EXPECT_EQ(distills("qad__seed2"), 0u) << "a cell started after the signal";

  const GridRunResult r = run_grid(grid_, options());
  EXPECT_EQ(r.count(CellOutcome::kFinished), 5u);
  EXPECT_EQ(distills("qad__seed1"), 1u);
  const auto d = invocations(log(), "distill", "cka-qad__seed1");
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NE(d[1].find("--resume"), std::string::npos);
}

TEST_F(Runner, OneCellPerGpu) {
  RunnerOptions o = options();
  o.gpus = {"0", "1"};
  const GridRunResult r = run_grid(grid_, o);
  EXPECT_EQ(r.count(CellOutcome::kFinished), 6u);
  bool saw[2] = {false, false};
  for (const auto& line : log()) {
    const bool distill = line.find(" distill ") != std::string::npos;
    EXPECT_TRUE(line.rfind("CVD=0 ", 0) == 0 || line.rfind("CVD=1 ", 0) == 0) << line;
    saw[line[4] - '0'] = true;
    if (distill) {
      EXPECT_NE(line.find("--set run.device=cuda"), std::string::npos) << line;
    } else {
      EXPECT_NE(line.find("--device cuda --json"), std::string::npos) << line;
    }
  }
  EXPECT_TRUE(saw[0] && saw[1]);
  for (const auto& cell : kCells) EXPECT_EQ(distills(cell), 1u) << cell;
}

TEST_F(Runner, SeveralCellsShareOneGpu) {
  RunnerOptions o = options();
  o.gpus = {"3"};
  o.cells_per_gpu = 3;
  const GridRunResult r = run_grid(grid_, o);
  EXPECT_EQ(r.count(CellOutcome::kFinished), 6u);
  for (const auto& line : log()) EXPECT_EQ(line.rfind("CVD=3 ", 0), 0u) << line;
  for (const auto& cell : kCells) EXPECT_EQ(distills(cell), 1u) << cell;
  o.cells_per_gpu = 0;
  EXPECT_THROW(run_grid(grid_, o), Error);
}

TEST_F(Runner, AProgramThatCannotRunFailsItsCells) {
  RunnerOptions o = options();
  o.qad_executable = (dir_ / "no-such-qad").string();
  const GridRunResult r = run_grid(grid_, o);
  EXPECT_EQ(r.count(CellOutcome::kFailed), 6u);
  EXPECT_EQ(read_status(paths("qad__seed1"))->value("exit_code", 0), 127);
  EXPECT_NE(read_text(paths("qad__seed1").log).find("cannot execute"), std::string::npos);
}

TEST_F(Runner, OneRunnerPerDirectory) {
  fs::create_directories(dir_ / "out");
  EXPECT_FALSE(runner_active(dir_ / "out"));
  std::optional<OutDirLock> held(dir_ / "out");
  EXPECT_TRUE(runner_active(dir_ / "out"));
  try {
    run_grid(grid_, options());
    FAIL() << "a second runner was let in";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another qad experiment (pid " + std::to_string(::getpid()) + ")"),
              std::string::npos)
        << e.what();
  }
  held.reset();
  EXPECT_FALSE(runner_active(dir_ / "out"));
}

// (e) The summary of the fake's grid against values computed by hand from the fake's formulas
// (experiment_test_util.h), seeds 1, 2, 3: qad kl = 0.11, 0.12, 0.13; agreement a − b = 0.011, 0.012, 0.013;
// kl a − b = −0.004, −0.001, 0.004; eval accuracy = 0.1, 0.2, 0.3.
TEST_F(Runner, SummaryOfTheGridEqualsHandComputedValues) {
  run_grid(grid_, options());
  const Summary s = summarize(grid_, dir_ / "out");
  ASSERT_EQ(s.groups.size(), 2u);
  const GroupSummary& qad = s.groups[0];
  EXPECT_EQ(qad.name, "qad");
  EXPECT_EQ(qad.seeds, (std::vector<uint64_t>{1, 2, 3}));
  const double t2 = 0.95 / std::sqrt(2.0 * 0.975 * 0.025);  // t(0.975; 2), closed form
  const Stats& kl = qad.metrics.at("kl");
  EXPECT_EQ(kl.n, 3u);
  EXPECT_NEAR(kl.mean, 0.12, 1e-12);
  EXPECT_NEAR(*kl.std_dev, 0.01, 1e-12);
  EXPECT_NEAR(*kl.std_err, 0.01 / std::sqrt(3.0), 1e-12);
  EXPECT_NEAR(*kl.ci_low, 0.12 - t2 * 0.01 / std::sqrt(3.0), 1e-12);
  EXPECT_NEAR(*kl.ci_high, 0.12 + t2 * 0.01 / std::sqrt(3.0), 1e-12);
  EXPECT_NEAR(qad.metrics.at("eval.accuracy").mean, 0.2, 1e-12);
  EXPECT_NEAR(*qad.metrics.at("eval.accuracy").std_dev, 0.1, 1e-12);
  EXPECT_NEAR(qad.metrics.at("cka.layers.1").mean, 0.93, 1e-12);
  EXPECT_EQ(qad.metrics.count("ppl"), 0u) << "null values are not numbers";

  auto paired = [&](const std::string& metric) -> const PairedRow& {
    for (const auto& r : s.paired) {
      if (r.metric == metric) return r;
    }
    throw std::runtime_error("no paired row for " + metric);
  };
  const PairedRow& ag = paired("agreement");
  EXPECT_EQ(ag.a, "cka-qad");
  EXPECT_EQ(ag.b, "qad");
  EXPECT_EQ(ag.diff.seeds, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_NEAR(ag.diff.stats.mean, 0.012, 1e-12);
  EXPECT_NEAR(*ag.diff.stats.std_dev, 0.001, 1e-12);
  EXPECT_NEAR(*ag.diff.stats.ci_low, 0.012 - t2 * 0.001 / std::sqrt(3.0), 1e-12);
  EXPECT_EQ(ag.verdict, "cka-qad > qad beyond noise (better)");
  const PairedRow& pk = paired("kl");
  EXPECT_NEAR(pk.diff.stats.mean, -0.001 / 3.0, 1e-12);
  EXPECT_NEAR(*pk.diff.stats.std_dev, std::sqrt((std::pow(-0.004 + 0.001 / 3, 2) + std::pow(-0.001 + 0.001 / 3, 2) +
                                                 std::pow(0.004 + 0.001 / 3, 2)) / 2.0), 1e-12);
  EXPECT_EQ(pk.verdict, "within noise");

  write_summary_files(s, dir_ / "out");
  const std::string md = read_text(dir_ / "out" / "summary.md");
  EXPECT_NE(md.find("| qad | 3 | 0.12 ± 0.01 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| cka-qad − qad | agreement | 3 | 0.012 ± 0.001 |"), std::string::npos) << md;
  const std::string csv = read_text(dir_ / "out" / "summary.csv");
  EXPECT_NE(csv.find("\ngroup,qad,,kl,3,0.12,0.01,"), std::string::npos) << csv;
  const auto j = nlohmann::json::parse(read_text(dir_ / "out" / "summary.json"));
  EXPECT_EQ(j["cells_finished"], 6);
  EXPECT_NEAR(j["groups"][0]["metrics"]["kl"]["ci95"][1].get<double>(), *kl.ci_high, 1e-15);
}

TEST(CellState, LastLinesKeepsTheEndAndTheLastStateOfARedrawnLine) {
  const auto dir = testing::fresh_dir("last_lines");
  testing::write_text(dir / "log.txt", "one\ntwo\nstep 1\rstep 2\rstep 3\nfour\n");
  EXPECT_EQ(last_lines(dir / "log.txt", 3), (std::vector<std::string>{"two", "step 3", "four"}));
  EXPECT_EQ(last_lines(dir / "log.txt", 10).size(), 4u);
  EXPECT_TRUE(last_lines(dir / "missing.txt", 3).empty());
  ::qad::remove_tree(dir);
}

}  // namespace
}  // namespace qad::experiment
