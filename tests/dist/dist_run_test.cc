// Data-parallel runs of the qad binary on stories260K over Gloo (CPU, FP32, a few seconds each):
// - 2 ranks x 2 rows give the loss curve of 1 rank x 4 rows (the same global batch), with ZeRO-1 and without;
// - a checkpoint written by 2 ranks resumes on 1 rank and the other way round, on the same trajectory;
// - a rank killed with SIGKILL stops the other within --dist-timeout with a clear error, and the last
//   checkpoint stays loadable; the local launcher names the dead rank and its signal.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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

#include "common/test_util.h"
#include "io/safetensors_torch.h"
#include "killed_rank.h"
#include "qad_process.h"
#include "stories_data.h"
#include "util/remove_tree.h"

namespace fs = std::filesystem;
using namespace qad::testing;

namespace {

class DistRunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ::setenv("OMP_NUM_THREADS", "1", 1);  // two ranks share the CI machine's cores
    root_ = fs::temp_directory_path() / ("qad_dist_test_" + std::to_string(::getpid()));
    ::qad::remove_tree(root_);
    fs::create_directories(root_);
    ASSERT_TRUE(prepare_stories(root_, data(), 160, 99, 0.1));
  }
  static void TearDownTestSuite() { ::qad::remove_tree(root_); }

  static fs::path model() { return stories_model(); }
  static fs::path data() { return root_ / "data"; }

  // A QAD run of `steps` steps with `rows` rows per rank; `nproc` > 1 uses the local launcher.
  static std::vector<std::string> args(const fs::path& out, int rows, int nproc, int steps = 6, int grad_accum = 1) {
    std::vector<std::string> a = {"distill", "--method", "qad", "--teacher", model().string(), "--data",
                                  data().string(), "--out", out.string(), "--device", "cpu", "--steps",
                                  std::to_string(steps), "--batch-size", std::to_string(rows), "--seq-len", "32",
                                  "--lr", "3e-3", "--warmup-ratio", "0.2", "--valid-every", "0", "--valid-batches", "1",
                                  "--checkpoint-every", "3", "--calib-batches", "2", "--dist-timeout", "20",
                                  "--set", "run.export_nvfp4=false", "--set", "data.valid_fraction=0.2"};
    if (nproc > 1) a.insert(a.end(), {"--nproc-per-node", std::to_string(nproc)});
    if (grad_accum > 1) a.insert(a.end(), {"--set", "optim.grad_accum=" + std::to_string(grad_accum)});
    return a;
  }

  static int run(const std::vector<std::string>& a, const fs::path& log) { return wait_for(spawn(a, log, {}), 300); }

  // Runs `first` killed with SIGKILL after step 4 (its last checkpoint: step 3's), then `then` with --resume, logging
  // to LOG1.log and LOG2.log. Several ranks: the launcher exits 1 naming the killed rank; one process dies of it.
  static void kill_then_resume(std::vector<std::string> first, std::vector<std::string> then, const fs::path& out,
                               const std::string& log) {
    const bool ranks = std::find(first.begin(), first.end(), "--nproc-per-node") != first.end();
    first.insert(first.end(), {"--debug-kill-at-step", "4"});
    const auto log1 = root_ / (log + "1.log"), log2 = root_ / (log + "2.log");
    int st = run(first, log1);
    if (ranks) {
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << slurp(log1);
      EXPECT_NE(slurp(log1).find("was killed by signal 9"), std::string::npos) << slurp(log1);
    } else {
      EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << slurp(log1);
    }
    ASSERT_TRUE(fs::exists(out / "checkpoints/step-00000003/trainer_state.json"));
    then.push_back("--resume");
    st = run(then, log2);
    ASSERT_TRUE(exited_ok(st)) << slurp(log2);
    EXPECT_NE(slurp(log2).find("resumed from"), std::string::npos) << slurp(log2);
  }

  // The steps of a curve up to `last`.
  static std::map<int64_t, double> upto(std::map<int64_t, double> c, int64_t last) {
    c.erase(c.upper_bound(last), c.end());
    return c;
  }

  // FP32 on CPU: 4 rows in one forward vs 2 + 2 in two processes round differently; a few ulps per step
  // through 6 Adam steps stay far below this.
  static void expect_close(const std::map<int64_t, double>& ref, const std::map<int64_t, double>& got,
                           const std::string& what, int64_t from = 1, double rel = 2e-4) {
    for (const auto& [step, v] : ref) {
      if (step < from) continue;
      ASSERT_TRUE(got.count(step)) << what << ": step " << step << " missing";
      EXPECT_NEAR(got.at(step), v, rel * std::abs(v) + 1e-7) << what << " at step " << step;
    }
  }

  // The reference: 1 rank x 4 rows (computed once).
  static const fs::path& reference() {
    static const fs::path ref = [] {
      const auto out = root_ / "ref_1x4";
      const int st = run(args(out, 4, 1), root_ / "ref.log");
      EXPECT_TRUE(exited_ok(st)) << slurp(root_ / "ref.log");
      return out;
    }();
    return ref;
  }

  // 1 rank x 2 micro-batches of 2 rows: what 2 ranks x 2 rows compute, in the same order (docs/dist.md,
  // "Layout-invariant training"; with 2 ranks Gloo's all-reduce a + b equals b + a).
  static const fs::path& reference_two_micro_batches() {
    static const fs::path ref = [] {
      const auto out = root_ / "ref_1x2x2";
      const int st = run(args(out, 2, 1, 6, 2), root_ / "ref_1x2x2.log");
      EXPECT_TRUE(exited_ok(st)) << slurp(root_ / "ref_1x2x2.log");
      return out;
    }();
    return ref;
  }

  static inline fs::path root_;
};

TEST_F(DistRunTest, TwoRanksMatchOneRankAtTheSameGlobalBatchWithAndWithoutZero) {
  const auto ref = curve(reference_two_micro_batches());
  ASSERT_EQ(ref.size(), 6u);
  EXPECT_GT(std::abs(ref.at(1) - ref.at(6)), 1e-3);  // the loss really moves

  const auto zero = root_ / "zero_2x2", plain = root_ / "plain_2x2";
  int st = run(args(zero, 2, 2), root_ / "zero.log");
  ASSERT_TRUE(exited_ok(st)) << slurp(root_ / "zero.log");
  auto no_zero = args(plain, 2, 2);
  no_zero.insert(no_zero.end(), {"--zero", "0"});
  st = run(no_zero, root_ / "plain.log");
  ASSERT_TRUE(exited_ok(st)) << slurp(root_ / "plain.log");

  expect_close(ref, curve(zero), "2 ranks ZeRO-1 vs 1 rank of 2 micro-batches: loss", 1, 1e-6);
  expect_close(ref, curve(plain), "2 ranks unsharded vs 1 rank of 2 micro-batches: loss", 1, 1e-6);
  expect_close(curve(reference_two_micro_batches(), "grad_norm"), curve(zero, "grad_norm"), "grad norm", 1, 1e-6);
  expect_close(curve(plain), curve(zero), "ZeRO-1 vs unsharded: loss", 1, 1e-6);
  // One rank of 4 rows: another summation (one GEMM over 4 rows), within FP32 tolerance until an NVFP4 rounding
  // flip (docs/dist.md): the first steps.
  expect_close(upto(curve(reference()), 3), curve(zero), "2 ranks ZeRO-1 vs 1 rank of 4 rows: loss");
  EXPECT_EQ(curve(reference(), "tokens"), curve(zero, "tokens"));  // tokens counted over both ranks

  // Only rank 0 prints progress; the log says what ran.
  const auto log = slurp(root_ / "zero.log");
  EXPECT_NE(log.find("data parallel: 2 ranks over gloo, ZeRO-1 on"), std::string::npos) << log;
  size_t n = 0;
  for (size_t at = 0; (at = log.find("qad distill:", at)) != std::string::npos; ++at) ++n;
  EXPECT_EQ(n, 1u) << log;
  // The checkpoint holds the whole optimizer state (gathered), named as a one-process run names it.
  auto s2 = qad::io::read_tensors(zero / "checkpoints/step-00000003/optimizer.safetensors");
  auto s1 = qad::io::read_tensors(reference_two_micro_batches() / "checkpoints/step-00000003/optimizer.safetensors");
  ASSERT_EQ(s1.size(), s2.size());
  for (size_t i = 0; i < s1.size(); ++i) {
    EXPECT_EQ(s1[i].first, s2[i].first);
    EXPECT_EQ(s1[i].second.sizes(), s2[i].second.sizes()) << s1[i].first;
    EXPECT_TRUE(torch::allclose(s1[i].second, s2[i].second, 1e-6, 1e-12)) << s1[i].first;
  }
}

TEST_F(DistRunTest, CheckpointsResumeWithAnotherNumberOfRanks) {
  const auto ref = curve(reference());
  // 2 ranks killed after step 4 (last checkpoint: step 3), resumed on 1 rank x 4 rows.
  const auto a = root_ / "two_then_one";
  ASSERT_NO_FATAL_FAILURE(kill_then_resume(args(a, 2, 2), args(a, 4, 1), a, "a"));
  // Steps 1-4 (the checkpoint is step 3's; step 4 is the first resumed one) to FP32 tolerance; later steps of
  // another split of the global batch may cross an NVFP4 rounding boundary that the reference did not (docs/dist.md):
  // within 1 % (a wrong resume position, optimizer state or quantizer scale moves the loss by far more).
  expect_close(upto(ref, 4), curve(a), "2 ranks then 1: loss");
  expect_close(ref, curve(a), "2 ranks then 1: loss", 5, 1e-2);

  // 1 rank x 4 rows killed after step 4, resumed on 2 ranks x 2 rows.
  const auto b = root_ / "one_then_two";
  ASSERT_NO_FATAL_FAILURE(kill_then_resume(args(b, 4, 1), args(b, 2, 2), b, "b"));
  expect_close(upto(ref, 4), curve(b), "1 rank then 2: loss");
  expect_close(ref, curve(b), "1 rank then 2: loss", 5, 1e-2);

  // Another global batch is refused, naming it.
  auto other = args(b, 4, 2);
  other.push_back("--resume");
  const int st = run(other, root_ / "b3.log");
  EXPECT_FALSE(exited_ok(st));
  EXPECT_NE(slurp(root_ / "b3.log").find("the global batch differs from the saved run's (4 rows per step"),
            std::string::npos) << slurp(root_ / "b3.log");
}

// step -> tokens_evaluated of each validation line in a run's metrics.jsonl.
std::map<int64_t, int64_t> validation_tokens(const fs::path& run) {
  std::map<int64_t, int64_t> out;
  std::ifstream f(run / "metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["type"] == "valid") out[j["step"].get<int64_t>()] = j["tokens_evaluated"].get<int64_t>();
  }
  return out;
}

// The global batch split another way: 2 ranks x 2 rows resume on 1 rank with 2 micro-batches of 2 rows (a GPU
// lost) and the other way round. Both compute what 1 rank x 2 micro-batches computes from the start, in the same
// order (the loader resumes at the same row, micro-batch i * W + r draws the same CKA stream), so the whole curve
// matches it to FP32 rounding; validation keeps the first run's batches of 4 rows.
TEST_F(DistRunTest, CheckpointsResumeWithFewerRanksAndMoreMicroBatches) {
  const auto ref = curve(reference_two_micro_batches());
  auto with_validation = [](std::vector<std::string> a) {
    set_flag(a, "--valid-every", "2");
    return a;
  };
  const auto a = root_ / "two_then_accum";
  ASSERT_NO_FATAL_FAILURE(
      kill_then_resume(with_validation(args(a, 2, 2)), with_validation(args(a, 2, 1, 6, 2)), a, "c"));
  expect_close(ref, curve(a), "2 ranks, then 1 rank x 2 micro-batches: loss", 1, 1e-6);
  const auto valid = validation_tokens(a);
  ASSERT_GE(valid.size(), 4u);  // steps 0 and 2 before the kill, 4 and 6 after the resume
  ASSERT_TRUE(valid.count(6));
  for (const auto& [step, tokens] : valid) {
    EXPECT_EQ(tokens, valid.begin()->second) << "validation at step " << step << " read other rows";
  }
  EXPECT_GT(valid.begin()->second, 2 * 32) << "more than one 2-row batch: the 2-rank run's 4 rows";

  const auto b = root_ / "accum_then_two";
  ASSERT_NO_FATAL_FAILURE(kill_then_resume(args(b, 2, 1, 6, 2), args(b, 2, 2), b, "d"));
  expect_close(ref, curve(b), "1 rank x 2 micro-batches, then 2 ranks: loss", 1, 1e-6);

  // CKA-QAD with two micro-batches on each of 2 ranks: rank r's micro-batch i holds the rows of the one-process
  // run's micro-batch i * 2 + r and draws its CKA subsample from that micro-batch's stream, so step 1 (before any
  // update, where the gradients' summation order cannot reach the loss) gives the one-process loss and CKA term.
  auto cka = [](std::vector<std::string> a) {
    set_flag(a, "--method", "cka-qad");
    a.insert(a.end(), {"--set", "loss.cka_subsample_tokens=16"});
    return a;
  };
  const auto split = root_ / "cka_2x1x2", whole = root_ / "cka_1x1x4";
  int st = run(cka(args(split, 1, 2, 2, 2)), root_ / "e1.log");
  ASSERT_TRUE(exited_ok(st)) << slurp(root_ / "e1.log");
  st = run(cka(args(whole, 1, 1, 2, 4)), root_ / "e2.log");
  ASSERT_TRUE(exited_ok(st)) << slurp(root_ / "e2.log");
  expect_close(upto(curve(whole), 1), curve(split), "CKA-QAD 2 ranks x 2 micro-batches vs 1 x 4: loss", 1, 1e-6);
  expect_close(upto(curve(whole, "cka_loss"), 1), curve(split, "cka_loss"), "the CKA term", 1, 1e-6);

  // Another global batch (2 rows per step where the run had 4) is refused, naming both splits.
  auto other = args(b, 2, 1);
  other.push_back("--resume");
  st = run(other, root_ / "d3.log");
  EXPECT_FALSE(exited_ok(st));
  const auto log = slurp(root_ / "d3.log");
  EXPECT_NE(log.find("the global batch differs from the saved run's (4 rows per step: batch_size 2 x 2 rank(s) x "
                     "grad_accum 1; now 2 x 1 x 1 = 2)"), std::string::npos) << log;
}

TEST_F(DistRunTest, AKilledRankStopsTheOtherWithAClearError) {
  const auto out = root_ / "killed_rank";
  expect_a_killed_rank_stops_the_other(args(out, 2, 1, 40), root_, out);

  // Through the local launcher: it names the dead rank and stops the other.
  const auto out2 = root_ / "killed_rank_launcher";
  auto b = args(out2, 2, 2, 40);
  b.insert(b.end(), {"--debug-kill-at-step", "2", "--debug-kill-rank", "1"});
  const int st = run(b, root_ / "launcher.log");
  const auto log = slurp(root_ / "launcher.log");
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << log;
  EXPECT_NE(log.find("rank 1 of 2 was killed by signal 9"), std::string::npos) << log;
}

}  // namespace
