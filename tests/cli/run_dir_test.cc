// The run directory under concurrent, interrupted, killed, moved and diverging runs of `qad distill` on
// stories260K (CPU, about a second per run): one writer at a time, a graceful stop on SIGTERM that resumes to
// byte-identical exports, a stale lock and stale temporaries recognised, paths compared by what they name, and
// no checkpoint from non-finite weights (issue #14, items 1, 2, 4, 6, 7).
#include "cli/cli_test_util.h"
#include "util/remove_tree.h"

namespace qad::cli_test {
namespace {

std::string hostname() {
  char h[256] = {0};
  ::gethostname(h, sizeof(h) - 1);
  return h;
}

class RunDirTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = scratch_root("run_dir");
    write_stories(root_ / "stories.jsonl");
  }
  static void TearDownTestSuite() { ::qad::remove_tree(root_); }

  static std::vector<std::string> args(const std::string& out, int steps, const std::string& data = "",
                                       std::vector<std::string> more = {}) {
    std::vector<std::string> a = {"distill", "--method", "qad", "--teacher", stories260k().string(), "--data",
                                  data.empty() ? (root_ / "stories.jsonl").string() : data, "--out", out, "--device",
                                  "cpu", "--steps", std::to_string(steps), "--batch-size", "4", "--seq-len", "32",
                                  "--lr", "2e-3", "--valid-every", "0", "--valid-batches", "1", "--checkpoint-every",
                                  "10", "--calib-batches", "1", "--log-every", "100", "--set", "data.valid_fraction=0.1"};
    return with_flags(a, more);
  }

  // step -> loss of the last train record with that step (a resumed run logs some steps twice).
  static std::map<int64_t, double> losses(const fs::path& run) {
    std::map<int64_t, double> out;
    std::istringstream in(slurp(run / "metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line, nullptr, false);  // the last line may be half-written while a run goes
      if (j.is_discarded() || !j.is_object() || j.value("type", "") != "train") continue;
      out[j["step"].get<int64_t>()] = j["loss"].is_number() ? j["loss"].get<double>() : NAN;
    }
    return out;
  }

  static int64_t last_logged_step(const fs::path& run) {
    const auto l = losses(run);
    return l.empty() ? 0 : l.rbegin()->first;
  }

  static inline fs::path root_;
};

TEST_F(RunDirTest, ASecondWriterIsRefusedAndSigtermStopsWithACheckpointThatResumesByteIdentically) {
  constexpr int kSteps = 40;
  const auto whole = root_ / "whole", stopped = root_ / "stopped";
  auto o = run_qad(args(whole.string(), kSteps), root_ / "whole.log");
  ASSERT_TRUE(o.exited(0)) << o.describe();

  // The stopped run holds after step 3 until the signal comes, so it is still running however fast the machine.
  constexpr int kHold = 3;
  const pid_t a = spawn_qad(args(stopped.string(), kSteps, "", {"--debug-hold-at-step", std::to_string(kHold)}),
                            root_ / "stopped.log");
  const std::string pid_field = "\"pid\":" + std::to_string(a);
  ASSERT_TRUE(wait_until([&] { return slurp(stopped / "run.lock").find(pid_field) != std::string::npos; }, 60))
      << slurp(root_ / "stopped.log");
  // A second run into the same directory, fresh or resumed, is refused naming the holder.
  for (bool resume : {false, true}) {
    auto b = args(stopped.string(), kSteps);
    if (resume) b.push_back("--resume");
    o = run_qad(b, root_ / "second.log");
    EXPECT_TRUE(is_user_error(o, {"in use by another qad distill", "pid " + std::to_string(a), "host " + hostname()}));
  }

  ASSERT_TRUE(wait_until([&] { return fs::exists(stopped / "metrics.jsonl") && last_logged_step(stopped) >= kHold; }, 60));
  ASSERT_EQ(::kill(a, SIGTERM), 0);
  o.status = wait_pid(a);
  o.log = slurp(root_ / "stopped.log");
  ASSERT_TRUE(o.exited(128 + SIGTERM)) << o.describe();
  const int64_t k = last_logged_step(stopped);
  ASSERT_EQ(k, kHold) << "the run should stop right after the step it held at";
  const auto ckpt = stopped / "checkpoints" / fmt::format("step-{:08d}", k);
  EXPECT_TRUE(fs::exists(ckpt / "trainer_state.json")) << "no checkpoint at the stop step " << k << "\n" << o.log;
  EXPECT_NE(o.log.find(fmt::format("stopped by SIGTERM after step {} of {}", k, kSteps)), std::string::npos) << o.log;
  EXPECT_NE(o.log.find("--resume"), std::string::npos) << o.log;
  EXPECT_FALSE(fs::exists(stopped / "run.lock")) << "the lock outlived the run";
  EXPECT_FALSE(fs::exists(stopped / "export"));
  EXPECT_FALSE(fs::exists(stopped / "final_metrics.json"));

  auto r = args(stopped.string(), kSteps);
  r.push_back("--resume");
  o = run_qad(r, root_ / "resumed.log");
  ASSERT_TRUE(o.exited(0)) << o.describe();
  EXPECT_NE(o.log.find(fmt::format("resumed from {}", ckpt.string())), std::string::npos) << o.log;
  const auto lw = losses(whole), ls = losses(stopped);
  ASSERT_EQ(lw.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(ls.size(), static_cast<size_t>(kSteps));
  for (const auto& [step, loss] : lw) EXPECT_EQ(loss, ls.at(step)) << "step " << step;
  const auto ew = tree_bytes(whole / "export"), es = tree_bytes(stopped / "export");
  ASSERT_FALSE(ew.empty());
  ASSERT_EQ(ew.size(), es.size());
  for (const auto& [name, bytes] : ew) EXPECT_TRUE(es.at(name) == bytes) << name << " differs after stop + resume";
}

TEST_F(RunDirTest, ASecondSignalStopsAtOnce) {
  const auto out = root_ / "twice";
  const auto o = run_qad(args(out.string(), 10, "", {"--debug-signal-at-steps", "2,2"}), root_ / "twice.log");
  EXPECT_TRUE(o.killed_by(SIGTERM)) << o.describe();
  EXPECT_NE(o.log.find("stopping after the current step"), std::string::npos) << o.log;
  EXPECT_FALSE(fs::exists(out / "checkpoints" / "step-00000002")) << "the second signal should not wait for it";
}

TEST_F(RunDirTest, AStaleLockAndStaleTemporariesAfterAKillAreRecognised) {
  const auto out = root_ / "killed";
  auto o = run_qad(args(out.string(), 8, "", {"--checkpoint-every", "3", "--debug-kill-at-step", "4"}),
                   root_ / "killed.log");
  ASSERT_TRUE(o.killed_by(SIGKILL)) << o.describe();
  ASSERT_TRUE(fs::exists(out / "run.lock"));
  const auto lock = nlohmann::json::parse(slurp(out / "run.lock"));
  const long killed_pid = lock.at("pid").get<long>();
  // What a kill during writes leaves behind: temporaries of a process that is gone, and one of a live process
  // (this test) that must be left alone.
  const pid_t dead = dead_pid(), alive = ::getpid();
  const std::vector<fs::path> stale = {out / "checkpoints" / fmt::format(".step-00000006.tmp-{}-0", dead),
                                       out / "data" / fmt::format(".train.tmp-{}-1", dead),
                                       out / fmt::format(".run.json.tmp-{}-2", dead)};
  const auto live = out / "checkpoints" / fmt::format(".step-00000009.tmp-{}-0", alive);
  for (const auto& p : {stale[0], stale[1], live}) {
    fs::create_directories(p);
    write(p / "model.safetensors", "partial");
  }
  write(stale[2], "{");

  o = run_qad(args(out.string(), 8, "", {"--checkpoint-every", "3", "--resume"}), root_ / "killed_resumed.log");
  ASSERT_TRUE(o.exited(0)) << o.describe();
  EXPECT_NE(o.log.find(fmt::format("stale lock of pid {} on host {}", killed_pid, hostname())), std::string::npos)
      << o.log;
  for (const auto& p : stale) {
    EXPECT_FALSE(fs::exists(p)) << p;
    EXPECT_NE(o.log.find("removed " + p.string()), std::string::npos) << o.log;
  }
  EXPECT_TRUE(fs::exists(live)) << "a live process's temporary was removed";
  EXPECT_FALSE(fs::exists(out / "run.lock"));
  EXPECT_TRUE(fs::exists(out / "final_metrics.json"));
}

TEST_F(RunDirTest, ResumeRecognisesPathsByWhatTheyNameNotHowTheyAreSpelled) {
  // Started with relative spellings from the scratch directory...
  auto o = run_qad(args("./runR", 8, "stories.jsonl", {"--checkpoint-every", "2", "--debug-kill-at-step", "3"}),
                   root_ / "r1.log", root_);
  ASSERT_TRUE(o.killed_by(SIGKILL)) << o.describe();
  // ... resumed with absolute ones from another directory ...
  o = run_qad(args((root_ / "runR").string(), 8, (root_ / "stories.jsonl").string(),
                   {"--checkpoint-every", "2", "--debug-kill-at-step", "5", "--resume"}), root_ / "r2.log", "/");
  ASSERT_TRUE(o.killed_by(SIGKILL)) << "the resume was refused: " << o.describe();
  EXPECT_NE(o.log.find("resumed from"), std::string::npos) << o.log;
  // ... and after the run directory and the data moved elsewhere (the data now a copy: same content).
  const auto moved = root_ / "moved";
  fs::create_directories(moved);
  fs::rename(root_ / "runR", moved / "runM");
  fs::copy_file(root_ / "stories.jsonl", moved / "copy.jsonl");
  o = run_qad(args("runM", 8, "copy.jsonl", {"--checkpoint-every", "2", "--resume"}), root_ / "r3.log", moved);
  ASSERT_TRUE(o.exited(0)) << o.describe();
  EXPECT_NE(o.log.find("resumed from"), std::string::npos) << o.log;
  // Other data under the recorded name is another run, though: refused, naming the setting.
  write_stories(moved / "other.jsonl", 240, 99);
  o = run_qad(args("runM", 8, "other.jsonl", {"--checkpoint-every", "2", "--resume"}), root_ / "r4.log", moved);
  EXPECT_TRUE(is_user_error(o, {"data.path"}));
}

TEST_F(RunDirTest, NonFiniteWeightsNeverBecomeACheckpoint) {
  // A weight that overflowed to Inf after step 1's update (injected: a finite loss has not shown it yet).
  const auto out = root_ / "diverged";
  const auto o = run_qad(args(out.string(), 4, "", {"--checkpoint-every", "1", "--debug-inf-weight-at-step", "1"}),
                         root_ / "diverged.log");
  EXPECT_TRUE(is_user_error(o, {"step 1", "holds NaN or Inf values", "no checkpoint was written"}));
  EXPECT_FALSE(fs::exists(out / "checkpoints" / "step-00000001"));
  EXPECT_FALSE(fs::exists(out / "checkpoints" / "latest"));
  // The same run without the overflow writes that checkpoint: the guard, not the setup, stopped the one above.
  const auto fine = root_ / "not_diverged";
  ASSERT_TRUE(run_qad(args(fine.string(), 1, "", {"--checkpoint-every", "1"}), root_ / "fine.log").exited(0));
  EXPECT_TRUE(fs::exists(fine / "checkpoints" / "step-00000001"));
}

}  // namespace
}  // namespace qad::cli_test
