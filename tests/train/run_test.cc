// End-to-end runs of the `qad distill` binary on stories260K (CPU, a few seconds each): a run killed with
// SIGKILL mid-way and resumed logs exactly (bitwise) the losses of an uninterrupted run; non-finite steps are
// skipped, and too many in a row stop the run with a clear message and the last good checkpoint intact;
// metrics.jsonl / run.json / final_metrics.json read back with report::read_run.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "util/remove_tree.h"
#include "report/run_reader.h"

namespace fs = std::filesystem;

namespace {

fs::path source_dir() { return QAD_SOURCE_DIR; }
fs::path shared_dir() {
  if (const char* s = std::getenv("QAD_SHARED_DIR")) return s;
  return source_dir().parent_path() / "shared";
}

class RunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("qad_run_test_" + std::to_string(::getpid()));
    ::qad::remove_tree(root_);
    fs::create_directories(root_);
    // Short generated stories in TinyStories' style (the teacher's domain), seeded.
    std::mt19937 rng(1234);
    const std::vector<std::string> names = {"Lily", "Tom", "Sue", "Ben", "Mia", "Max"};
    const std::vector<std::string> things = {"ball", "cat", "tree", "cake", "boat", "dog", "flower"};
    const std::vector<std::string> feel = {"happy", "sad", "tired", "excited", "scared"};
    std::ofstream f(root_ / "stories.jsonl");
    for (int d = 0; d < 240; ++d) {
      auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
      std::string a = pick(names), b = pick(names), t = pick(things);
      std::string text = "Once upon a time, there was a little girl named " + a + ". " + a + " had a big " + t +
                         ". One day, " + a + " saw " + b + " in the park. " + b + " was " + pick(feel) + ". " + a +
                         " said, \\\"Do you want to play with my " + t + "?\\\" " + b + " smiled and they played all day.";
      f << "{\"text\": \"" << text << "\"}\n";
    }
  }
  static void TearDownTestSuite() { ::qad::remove_tree(root_); }

  // Runs the qad binary; returns the raw wait status. stdout+stderr go to `log`.
  static int run_qad(const std::vector<std::string>& args, const fs::path& log) {
    pid_t pid = fork();
    if (pid == 0) {
      FILE* out = std::freopen(log.c_str(), "w", stdout);
      (void)out;
      dup2(fileno(stdout), fileno(stderr));
      std::vector<char*> argv;
      std::string bin = QAD_BINARY;
      argv.push_back(bin.data());
      std::vector<std::string> copy = args;
      for (auto& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
  }

  static std::vector<std::string> base_args(const fs::path& out) {
    return {"distill", "--method", "cka-qad", "--teacher", (shared_dir() / "models/stories260K").string(),
            "--data", (root_ / "stories.jsonl").string(), "--out", out.string(), "--device", "cpu",
            "--ce", "0.5", "--cka", "0.5", "--cka-subsample", "48", "--steps", "9", "--batch-size", "4",
            "--seq-len", "32", "--lr", "2e-3", "--warmup-ratio", "0.2", "--valid-every", "4", "--valid-batches", "2",
            "--checkpoint-every", "3", "--calib-batches", "2", "--set", "data.valid_fraction=0.1"};
  }

  // step -> the loss of the LAST train line with that step (a resumed run re-logs steps).
  static std::map<int64_t, double> losses(const fs::path& run) {
    std::map<int64_t, double> out;
    std::ifstream f(run / "metrics.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      auto j = nlohmann::json::parse(line);
      if (j["type"] == "train") out[j["step"].get<int64_t>()] = j["loss"].is_null() ? NAN : j["loss"].get<double>();
    }
    return out;
  }

  static std::string slurp(const fs::path& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }

  static inline fs::path root_;
};

TEST_F(RunTest, SigkillMidRunThenResumeGivesTheSameLosses) {
  const auto a = root_ / "uninterrupted", b = root_ / "killed";
  int st = run_qad(base_args(a), root_ / "a.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "a.log");

  auto killed_args = base_args(b);
  killed_args.insert(killed_args.end(), {"--debug-kill-at-step", "5"});  // after step 5's update; last checkpoint: 3
  st = run_qad(killed_args, root_ / "b1.log");
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << slurp(root_ / "b1.log");
  EXPECT_TRUE(fs::exists(b / "checkpoints/step-00000003/trainer_state.json"));
  EXPECT_FALSE(fs::exists(b / "final_metrics.json"));

  auto resume_args = base_args(b);
  resume_args.push_back("--resume");
  st = run_qad(resume_args, root_ / "b2.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "b2.log");
  EXPECT_NE(slurp(root_ / "b2.log").find("resumed from"), std::string::npos);

  auto la = losses(a), lb = losses(b);
  ASSERT_EQ(la.size(), 9u);
  ASSERT_EQ(lb.size(), 9u);
  for (const auto& [step, loss] : la) {
    EXPECT_EQ(loss, lb.at(step)) << "step " << step << " (bitwise equality on CPU)";
  }
  // The KL really moved: the losses are not a constant.
  EXPECT_NE(la.at(1), la.at(9));
  auto fa = nlohmann::json::parse(slurp(a / "final_metrics.json"));
  auto fb = nlohmann::json::parse(slurp(b / "final_metrics.json"));
  EXPECT_EQ(fa["kl"], fb["kl"]);
  EXPECT_EQ(fa["mean_cka"], fb["mean_cka"]);

  // A changed configuration is refused on resume, naming the setting.
  auto changed = base_args(b);
  *std::find(changed.begin(), changed.end(), "2e-3") = "1e-3";  // the --lr value
  changed.push_back("--resume");
  st = run_qad(changed, root_ / "b3.log");
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1);
  EXPECT_NE(slurp(root_ / "b3.log").find("optim.lr"), std::string::npos) << slurp(root_ / "b3.log");

  // The report reader takes the run as it is: every step once (the re-logged steps 4 and 5 and validation at 4
  // replaced, which it notes), nothing else to warn about.
  auto run = qad::report::read_run(b);
  EXPECT_EQ(run.method, "cka-qad");
  ASSERT_EQ(run.warnings.size(), 1u);
  EXPECT_NE(run.warnings[0].find("3 step(s) were logged more than once"), std::string::npos) << run.warnings[0];
  EXPECT_TRUE(qad::report::read_run(a).warnings.empty());
  ASSERT_EQ(run.train.size(), 9u);
  EXPECT_GE(run.valid.size(), 3u);  // steps 0, 4, 8 (and 9)
  const auto& last = run.train.back();
  for (const char* k : {"loss", "kl", "ce", "cka_loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb", "tokens"}) {
    EXPECT_TRUE(last.get(k).has_value()) << k;
  }
  EXPECT_EQ(last.cka.size(), 5u);  // stories260K has 5 decoder layers
  EXPECT_TRUE(run.valid.front().get("kl").has_value());
  EXPECT_TRUE(run.valid.front().get("mean_cka").has_value());
  EXPECT_TRUE(run.valid.front().get("agreement").has_value());
  ASSERT_NE(run.final_metric("kl"), nullptr);

  // The run directory is a model for every command (checkpoint::load_model): `qad generate --model RUN_DIR`
  // continues with the latest checkpoint's student, exactly as naming that checkpoint does.
  const std::vector<std::string> gen = {"--prompt-ids", "1,403", "--max-new-tokens", "6", "--greedy", "--json",
                                        "--device", "cpu"};
  auto generate = [&](const fs::path& model, const fs::path& log) {
    std::vector<std::string> args = {"generate", "--model", model.string()};
    args.insert(args.end(), gen.begin(), gen.end());
    const int status = run_qad(args, log);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
    const auto text = slurp(log);
    const auto j = nlohmann::json::parse(text.substr(text.find('{')));
    return j["outputs"][0]["new_ids"];
  };
  const auto from_run = generate(a, root_ / "g1.log");
  EXPECT_EQ(from_run.size(), 6u);
  EXPECT_EQ(from_run, generate(a / "checkpoints" / "step-00000009", root_ / "g2.log"));

  // A run saved before a setting existed (its run.json lacks the key) resumes when the setting has its default
  // (the behaviour that run had), and is refused, naming the key, when it is set otherwise.
  auto saved = nlohmann::json::parse(slurp(b / "run.json"));
  ASSERT_TRUE(saved["config"]["loss"].contains("cka_bf16_products"));
  saved["config"]["loss"].erase("cka_bf16_products");
  std::ofstream(b / "run.json") << saved.dump(2);
  auto same = base_args(b);
  same.push_back("--resume");
  st = run_qad(same, root_ / "b4.log");
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "b4.log");
  std::ofstream(b / "run.json") << saved.dump(2);  // (the resume may have rewritten it)
  same.insert(same.end(), {"--set", "loss.cka_bf16_products=true"});
  st = run_qad(same, root_ / "b5.log");
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1);
  EXPECT_NE(slurp(root_ / "b5.log").find("loss.cka_bf16_products is missing from the saved config"), std::string::npos)
      << slurp(root_ / "b5.log");
}

// --offload optimizer through the binary (on the CPU: the state in a second host copy, the fused reference): a
// killed offloaded run resumes to the uninterrupted one's losses bit for bit, and may resume without offload (the
// state moves, the arithmetic is AdamW's). --plan reads only the teacher's config and creates nothing.
TEST_F(RunTest, OffloadedRunResumesAndPlanCreatesNothing) {
  const auto a = root_ / "offload_whole", b = root_ / "offload_killed", c = root_ / "offload_then_not";
  // base_args with more flags; a flag base_args already has (--steps) gets the new value (CLI11 refuses repeats).
  auto with = [](std::vector<std::string> args, std::vector<std::string> more) {
    for (size_t i = 0; i < more.size(); ++i) {
      auto it = std::find(args.begin(), args.end(), more[i]);
      if (it != args.end() && i + 1 < more.size() && more[i + 1].rfind("--", 0) != 0) {
        *(it + 1) = more[++i];
      } else {
        args.push_back(more[i]);
      }
    }
    return args;
  };
  int st = run_qad(with(base_args(a), {"--steps", "6", "--offload", "optimizer"}), root_ / "o1.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "o1.log");
  EXPECT_NE(slurp(root_ / "o1.log").find("optimizer offload:"), std::string::npos) << slurp(root_ / "o1.log");
  for (const auto& dir : {b, c}) {
    st = run_qad(with(base_args(dir), {"--steps", "6", "--offload", "optimizer", "--debug-kill-at-step", "5"}),
                 root_ / "o2.log");
    ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << slurp(root_ / "o2.log");
  }
  st = run_qad(with(base_args(b), {"--steps", "6", "--offload", "optimizer", "--resume"}), root_ / "o3.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "o3.log");
  st = run_qad(with(base_args(c), {"--steps", "6", "--resume"}), root_ / "o4.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "o4.log");
  const auto la = losses(a), lb = losses(b), lc = losses(c);
  ASSERT_EQ(la.size(), 6u);
  ASSERT_EQ(lb.size(), 6u);
  ASSERT_EQ(lc.size(), 6u);
  for (const auto& [step, loss] : la) {
    EXPECT_EQ(loss, lb.at(step)) << "step " << step << " (bitwise equality on CPU)";
    // Without offload the CPU update is torch ops, which may contract multiply-adds: the same to float rounding.
    EXPECT_NEAR(loss, lc.at(step), 1e-4 * std::abs(loss)) << "step " << step;
  }

  const auto plan_out = root_ / "plan_never_created";
  auto plan_args = with(base_args(plan_out), {"--plan", "--gpu-memory", "80"});
  st = run_qad(plan_args, root_ / "p1.log");
  const auto text = slurp(root_ / "p1.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << text;
  EXPECT_NE(text.find("predicted peak per GPU"), std::string::npos) << text;
  EXPECT_NE(text.find("FITS"), std::string::npos) << text;
  EXPECT_FALSE(fs::exists(plan_out));
  st = run_qad(with(base_args(plan_out), {"--plan", "--gpu-memory", "0.5"}), root_ / "p2.log");
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  EXPECT_NE(slurp(root_ / "p2.log").find("DOES NOT FIT"), std::string::npos) << slurp(root_ / "p2.log");
}

TEST_F(RunTest, NonFiniteStepsAreSkippedAndTooManyStopTheRun) {
  // One poisoned step: skipped with a warning, the run goes on and finishes.
  const auto one = root_ / "one_nan";
  auto args = base_args(one);
  args.insert(args.end(), {"--debug-nan-at-steps", "2"});
  int st = run_qad(args, root_ / "n1.log");
  const auto log1 = slurp(root_ / "n1.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << log1;
  EXPECT_NE(log1.find("step 2: non-finite loss"), std::string::npos) << log1;
  std::ifstream f(one / "metrics.jsonl");
  std::string line;
  int skipped = 0;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.value("skipped", false)) {
      ++skipped;
      EXPECT_EQ(j["step"], 2);
      EXPECT_TRUE(j["loss"].is_null());
    }
  }
  EXPECT_EQ(skipped, 1);

  // Three in a row with a limit of three: stop, name the last good checkpoint, export nothing.
  const auto many = root_ / "many_nan";
  args = base_args(many);
  args.insert(args.end(), {"--debug-nan-at-steps", "5,6,7", "--max-bad-steps", "3"});
  st = run_qad(args, root_ / "n2.log");
  const auto log2 = slurp(root_ / "n2.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << log2;
  EXPECT_NE(log2.find("stopped after 3 consecutive steps with a non-finite loss or gradient (steps 5-7)"),
            std::string::npos) << log2;
  EXPECT_NE(log2.find("step-00000003"), std::string::npos) << log2;
  EXPECT_TRUE(fs::exists(many / "checkpoints/step-00000003/model/config.json"));
  EXPECT_FALSE(fs::exists(many / "final_metrics.json"));
}

// Steps overlapped as on a GPU (each step's values read after the next step is queued; on the CPU through the fused
// AdamW's reference, which gives the trainer a device-side step): the log says so, and the run logs the bits of the
// same run read step by step, with skipped steps (one whose read is deferred: step 2) and validations and
// checkpoints between; a run killed mid-way resumes to the same losses.
TEST_F(RunTest, OverlappedStepsLogTheBitsOfStepsReadOneByOne) {
  auto args = [&](const fs::path& out, bool sequential) {
    auto a = base_args(out);
    a.insert(a.end(), {"--set", "debug.fused_adamw_on_cpu=true", "--debug-nan-at-steps", "2,6"});
    if (sequential) a.insert(a.end(), {"--set", "debug.sequential_steps=true"});
    return a;
  };
  const auto overlapped = root_ / "overlapped", sequential = root_ / "sequential", killed = root_ / "overlap_killed";
  int st = run_qad(args(overlapped, false), root_ / "o1.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "o1.log");
  st = run_qad(args(sequential, true), root_ / "o2.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "o2.log");
  // Steps 1, 2, 5 and 7 are read after the next one is queued; 3, 6 (checkpoints), 4, 8 (validations) and 9 (the
  // end) before.
  const std::string note = "each step's values are read after the next step is queued";
  EXPECT_NE(slurp(root_ / "o1.log").find(note), std::string::npos) << slurp(root_ / "o1.log");
  EXPECT_NE(slurp(root_ / "o1.log").find("steps overlap: 4 of 9 steps were read after the next one was queued"),
            std::string::npos) << slurp(root_ / "o1.log");
  EXPECT_EQ(slurp(root_ / "o2.log").find("steps overlap"), std::string::npos) << slurp(root_ / "o2.log");

  auto records = [&](const fs::path& run) {
    std::map<std::pair<std::string, int64_t>, nlohmann::json> out;  // (type, step) -> the last record
    std::ifstream f(run / "metrics.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      auto j = nlohmann::json::parse(line);
      for (const char* timing : {"tokens_per_s", "peak_mem_gb"}) j.erase(timing);
      out[{j["type"].get<std::string>(), j["step"].get<int64_t>()}] = j;
    }
    return out;
  };
  const auto a = records(overlapped), b = records(sequential);
  ASSERT_EQ(a.size(), b.size());
  int skipped = 0, valid = 0;
  for (const auto& [key, j] : a) {
    ASSERT_TRUE(b.count(key)) << key.first << " " << key.second;
    EXPECT_EQ(j, b.at(key)) << key.first << " step " << key.second << " (bitwise on the CPU)";
    skipped += j.value("skipped", false) ? 1 : 0;
    valid += key.first == "valid" ? 1 : 0;
  }
  EXPECT_EQ(skipped, 2);
  EXPECT_GE(valid, 3);
  auto final_metrics = [&](const fs::path& run) {
    auto j = nlohmann::json::parse(slurp(run / "final_metrics.json"));
    j.erase("train_seconds");
    return j;
  };
  EXPECT_EQ(final_metrics(overlapped), final_metrics(sequential));

  auto kill = args(killed, false);
  kill.insert(kill.end(), {"--debug-kill-at-step", "5"});
  st = run_qad(kill, root_ / "o3.log");
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << slurp(root_ / "o3.log");
  auto resume = args(killed, false);
  resume.push_back("--resume");
  st = run_qad(resume, root_ / "o4.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "o4.log");
  const auto la = losses(overlapped), lk = losses(killed);
  ASSERT_EQ(lk.size(), la.size());
  for (const auto& [step, loss] : la) {
    if (std::isnan(loss)) EXPECT_TRUE(std::isnan(lk.at(step))) << "step " << step;
    else EXPECT_EQ(loss, lk.at(step)) << "step " << step;
  }
}

// The CKA term may train a subset of the layers; validation still measures every decoder layer and mean_cka is
// their mean, so runs that train different layers are compared on one metric (the study's "last third" cell was
// once compared with QAD over three layers against eight). A named non-decoder hidden state ("norm") is reported
// beside them, outside the mean; the training log's per-layer values are the trained layers only.
TEST_F(RunTest, ValidationCkaCoversEveryDecoderLayerWhateverTheLossTrains) {
  const auto out = root_ / "subset";
  auto args = base_args(out);
  for (auto& a : args) if (a == "9") a = "2";  // --steps
  args.insert(args.end(), {"--set", R"(loss.cka_layers=["layers.3","norm"])"});
  const int st = run_qad(args, root_ / "subset.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(root_ / "subset.log");
  auto fm = nlohmann::json::parse(slurp(out / "final_metrics.json"));
  ASSERT_TRUE(fm["cka"].is_object()) << fm.dump();
  double sum = 0;
  for (int l = 0; l < 5; ++l) {  // stories260K has 5 decoder layers
    const auto key = "layers." + std::to_string(l);
    ASSERT_TRUE(fm["cka"].contains(key)) << fm.dump();
    const double v = fm["cka"][key].get<double>();
    EXPECT_GT(v, 0.5);
    EXPECT_LE(v, 1.0 + 1e-9);
    sum += v;
  }
  ASSERT_TRUE(fm["cka"].contains("norm")) << fm.dump();
  EXPECT_EQ(fm["cka"].size(), 6u);
  EXPECT_NEAR(fm["mean_cka"].get<double>(), sum / 5, 1e-12);
  EXPECT_NE(fm["mean_cka"].get<double>(), (sum + fm["cka"]["norm"].get<double>()) / 6);

  std::ifstream f(out / "metrics.jsonl");
  std::string line;
  int train_lines = 0;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["type"] != "train") continue;
    ++train_lines;
    ASSERT_TRUE(j["cka"].is_object()) << line;
    EXPECT_EQ(j["cka"].size(), 2u) << line;
    EXPECT_TRUE(j["cka"].contains("layers.3") && j["cka"].contains("norm")) << line;
  }
  EXPECT_EQ(train_lines, 2);
}

}  // namespace
