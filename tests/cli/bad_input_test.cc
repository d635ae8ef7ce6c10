// Bad flags and bad files, as a careless user gives them: each is refused with exit status 1 and one line that
// names the flag or file and the fix, before anything is written (issue #14, items 2, 3, 5, 8, 9, 10).
#include "cli/cli_test_util.h"
#include "util/remove_tree.h"

namespace qad::cli_test {
namespace {

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = scratch_root("bad_input");
    write_stories(root_ / "stories.jsonl");
  }
  static void TearDownTestSuite() { ::qad::remove_tree(root_); }

  static Outcome qad(const std::vector<std::string>& args) { return run_qad(args, root_ / "log.txt"); }

  static std::vector<std::string> distill(const fs::path& out, std::vector<std::string> more = {}) {
    const std::vector<std::string> a = {"distill", "--teacher", stories260k().string(), "--data",
                                  (root_ / "stories.jsonl").string(), "--out", out.string(), "--device", "cpu",
                                  "--steps", "3", "--batch-size", "4", "--seq-len", "32", "--calib-batches", "1",
                                  "--valid-batches", "1"};
    return with_flags(a, more);
  }

  static inline fs::path root_;
};

TEST_F(BadInputTest, UnknownDeviceIsAUserMistakeInEveryCommand) {
  const auto out = root_ / "tpu_run";
  auto d = distill(out);
  d[std::find(d.begin(), d.end(), "cpu") - d.begin()] = "tpu";
  EXPECT_TRUE(is_user_error(qad(d), {"--device tpu", "cpu"}));
  EXPECT_FALSE(fs::exists(out)) << "a refused start leaves no --out behind";
  EXPECT_TRUE(is_user_error(qad({"demo", "--smoke", "--device", "tpu", "--out", (root_ / "demo_tpu").string()}),
                            {"--device tpu"}));
  EXPECT_FALSE(fs::exists(root_ / "demo_tpu"));
  EXPECT_TRUE(is_user_error(qad({"generate", "--model", stories260k().string(), "--prompt-ids", "1", "--device", "tpu"}),
                            {"--device", "tpu"}));
  EXPECT_TRUE(is_user_error(qad({"eval", "--model", stories260k().string(), "--data", (root_ / "stories.jsonl").string(),
                                 "--device", "tpu"}), {"--device", "tpu"}));
}

TEST_F(BadInputTest, NumericSettingsAreValidatedBeforeAnythingRuns) {
  struct Case {
    std::vector<std::string> flags;
    std::string names;       // the setting the message must name
    std::string not_named;   // a rule the message must not list
  };
  const std::vector<Case> cases = {
      {{"--lr", "inf"}, "optim.lr", "weight_decay"},
      {{"--lr", "nan"}, "optim.lr", ""},
      {{"--weight-decay", "inf"}, "optim.weight_decay", "optim.lr"},
      {{"--steps", "-5"}, "run.steps", "run.log_every"},
      {{"--steps", "1e30"}, "run.steps", ""},
      {{"--temperature", "0"}, "loss.temperature", ""},
      {{"--set", "optim.grad_clip=-inf"}, "optim.grad_clip", ""},
      {{"--set", "optim.beta2=1"}, "optim.beta2", "beta1"},
      {{"--warmup-ratio", "1.5"}, "optim.warmup_fraction", ""},
      {{"--warmup-steps", "-2"}, "optim.warmup_steps", ""},
      {{"--warmup", "100"}, "--warmup-steps", ""},  // HF users mean steps: ambiguous, refused naming both
      {{"--warmup", "100"}, "--warmup-ratio", ""},
      {{"--dist-timeout", "nan"}, "--dist-timeout", ""},
  };
  for (const auto& c : cases) {
    const auto out = root_ / "numeric";
    const auto o = qad(distill(out, c.flags));
    EXPECT_TRUE(is_user_error(o, {c.names})) << c.flags[0] << " " << c.flags[1];
    if (!c.not_named.empty()) {
      EXPECT_EQ(o.log.find(c.not_named), std::string::npos) << "one rule per message: " << o.log;
    }
    EXPECT_FALSE(fs::exists(out)) << c.flags[0] << ": nothing may be written for a refused setting";
  }
  EXPECT_TRUE(is_user_error(qad({"generate", "--model", stories260k().string(), "--prompt-ids", "1", "--temperature",
                                 "inf", "--device", "cpu"}), {"--temperature"}));
  EXPECT_TRUE(is_user_error(qad({"generate", "--model", stories260k().string(), "--prompt-ids", "1", "--top-p", "nan",
                                 "--device", "cpu"}), {"--top-p"}));
}

TEST_F(BadInputTest, MissingModelIsNamedAsSuch) {
  const auto o = qad({"eval", "--model", "/nonexistent", "--data", (root_ / "stories.jsonl").string(), "--device", "cpu"});
  EXPECT_TRUE(is_user_error(o, {"--model /nonexistent", "no such directory"}));
  EXPECT_EQ(o.log.find("tokenizer"), std::string::npos) << o.log;
  EXPECT_TRUE(is_user_error(qad({"cka", "--teacher", stories260k().string(), "--model", "/nonexistent", "--data",
                                 (root_ / "stories.jsonl").string(), "--device", "cpu"}),
                            {"--model /nonexistent", "no such directory"}));
}

TEST_F(BadInputTest, TokenizeRefusesItsInputAsOutputDirectoriesAndCompressedInput) {
  const auto tok = stories260k().string();
  const auto x = root_ / "same.jsonl";
  write(x, "{\"text\": \"hello\"}\n");
  const auto before = slurp(x);
  EXPECT_TRUE(is_user_error(qad({"tokenize", "--tokenizer", tok, "--input", x.string(), "--out", x.string()}),
                            {"--out", "is the input file"}));
  EXPECT_EQ(slurp(x), before) << "the input must survive";
  // The same file under another spelling.
  EXPECT_TRUE(is_user_error(qad({"tokenize", "--tokenizer", tok, "--input", x.string(), "--out",
                                 (root_ / "." / "same.jsonl").string()}), {"is the input file"}));
  EXPECT_EQ(slurp(x), before);

  const auto dir = root_ / "a_dir";
  fs::create_directories(dir);
  const auto out = root_ / "from_dir.jsonl";
  EXPECT_TRUE(is_user_error(qad({"tokenize", "--tokenizer", tok, "--input", dir.string(), "--out", out.string()}),
                            {"--input", "is a directory"}));
  EXPECT_FALSE(fs::exists(out));

  const auto xz = root_ / "stories.jsonl.xz";
  write(xz, std::string("\xFD" "7zXZ\0\0\x04\xE6\xD6\xB4\x46", 12));
  EXPECT_TRUE(is_user_error(qad({"tokenize", "--tokenizer", tok, "--input", xz.string(), "--out", out.string()}),
                            {"xz-compressed", "xz -dk"}));
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(BadInputTest, DataPrepareWithoutDocumentsFails) {
  const auto tok = stories260k().string();
  const auto empty = root_ / "empty.jsonl", invalid = root_ / "invalid.jsonl";
  write(empty, "");
  write(invalid, "{\"text\": 1}\nnot json\n{\"other\": \"x\"}\n");
  const auto out = root_ / "no_docs";
  EXPECT_TRUE(is_user_error(qad({"data", "prepare", "--tokenizer", tok, "--input", empty.string(), "--out",
                                 out.string()}), {"no documents"}));
  EXPECT_FALSE(fs::exists(out));
  const auto o = qad({"data", "prepare", "--tokenizer", tok, "--input", invalid.string(), "--out", out.string()});
  EXPECT_TRUE(is_user_error(o, {"no documents", "3 skipped"}));
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(BadInputTest, HugeInvalidLineIsQuotedShortly) {
  // A 5 MB line that is not JSON among valid ones: skipped, reported in a short line, and skipped.jsonl stays small.
  const auto in = root_ / "huge_line.jsonl";
  {
    std::ofstream f(in);
    f << "{\"text\": \"Lily had a ball.\"}\n{\"text\": \"" << std::string(5 << 20, 'a') << " unterminated\n"
      << "{\"text\": \"Tom had a cat.\"}\n";
  }
  const auto out = root_ / "huge_line_ds";
  const auto o = qad({"data", "prepare", "--tokenizer", stories260k().string(), "--input", in.string(), "--out",
                      out.string()});
  ASSERT_TRUE(o.exited(0)) << o.describe().substr(0, 2000);
  EXPECT_LT(o.log.size(), 4000u) << "the bad line was echoed";
  EXPECT_LT(fs::file_size(out / "skipped.jsonl"), 1000u);
  EXPECT_NE(slurp(out / "skipped.jsonl").find("bytes)"), std::string::npos) << "clipped, with the length";
}

TEST_F(BadInputTest, NonFiniteWeightsAreNamedAtLoad) {
  const auto nan_model = root_ / "nan_model";
  tampered_teacher(nan_model, "model.layers.2.mlp.down_proj.weight", std::numeric_limits<float>::quiet_NaN());
  const std::vector<std::string> named = {"model.layers.2.mlp.down_proj.weight", "NaN or Inf"};
  for (const auto& sampling : {std::vector<std::string>{"--greedy"}, std::vector<std::string>{"--temperature", "0.8"}}) {
    std::vector<std::string> a = {"generate", "--model", nan_model.string(), "--prompt-ids", "1,403", "--device", "cpu",
                                  "--max-new-tokens", "4"};
    a.insert(a.end(), sampling.begin(), sampling.end());
    EXPECT_TRUE(is_user_error(qad(a), named)) << sampling[0];
  }
  EXPECT_TRUE(is_user_error(qad({"eval", "--model", stories260k().string(), "--teacher", nan_model.string(), "--data",
                                 (root_ / "stories.jsonl").string(), "--device", "cpu", "--max-tokens", "256"}), named));
  EXPECT_TRUE(is_user_error(qad({"cka", "--teacher", nan_model.string(), "--model", stories260k().string(), "--data",
                                 (root_ / "stories.jsonl").string(), "--device", "cpu", "--tokens", "256"}), named));
}

TEST_F(BadInputTest, NonFiniteOutputsAreCaughtAtRunTime) {
  // Finite weights whose activations overflow FP32: every layer-2 output, and so the logits, become Inf / NaN.
  const auto huge = root_ / "overflow_model";
  tampered_teacher(huge, "model.layers.2.mlp.down_proj.weight", 3e38f);
  for (const auto& sampling : {std::vector<std::string>{"--greedy"}, std::vector<std::string>{"--temperature", "0.8"}}) {
    std::vector<std::string> a = {"generate", "--model", huge.string(), "--prompt-ids", "1,403", "--device", "cpu",
                                  "--max-new-tokens", "4"};
    a.insert(a.end(), sampling.begin(), sampling.end());
    EXPECT_TRUE(is_user_error(qad(a), {"logits hold NaN or Inf"})) << sampling[0];
  }
  EXPECT_TRUE(is_user_error(qad({"eval", "--model", stories260k().string(), "--teacher", huge.string(), "--data",
                                 (root_ / "stories.jsonl").string(), "--device", "cpu", "--max-tokens", "256"}),
                            {"teacher", "not finite"}));
  EXPECT_TRUE(is_user_error(qad({"eval", "--model", huge.string(), "--data", (root_ / "stories.jsonl").string(),
                                 "--device", "cpu", "--max-tokens", "256"}), {"not finite"}));
  EXPECT_TRUE(is_user_error(qad({"cka", "--teacher", stories260k().string(), "--model", huge.string(), "--data",
                                 (root_ / "stories.jsonl").string(), "--device", "cpu", "--tokens", "256"}),
                            {"hidden state layers.2", "NaN or Inf"}));
}

TEST_F(BadInputTest, GenerateFromIdsNeedsNoTokenizerAndWarnsBeyondTheContext) {
  const auto bare = root_ / "no_tokenizer";
  tampered_teacher(bare, "", 0, /*with_tokenizer=*/false);
  auto o = qad({"generate", "--model", bare.string(), "--prompt-ids", "1,403", "--greedy", "--max-new-tokens", "3",
                "--device", "cpu", "--stop-ids", "none"});
  ASSERT_TRUE(o.exited(0)) << o.describe();
  EXPECT_NE(o.log.find("ids: "), std::string::npos) << o.log;
  o = qad({"generate", "--model", bare.string(), "--prompt-ids", "1,403", "--greedy", "--max-new-tokens", "520",
           "--device", "cpu", "--stop-ids", "none"});
  ASSERT_TRUE(o.exited(0)) << o.describe().substr(0, 3000);
  EXPECT_NE(o.log.find("longer than " + bare.string() + "'s max_position_embeddings (512)"), std::string::npos)
      << o.log.substr(0, 3000);
}

TEST_F(BadInputTest, TooLittleDataNamesSettingsThatExist) {
  const auto o = qad(distill(root_ / "too_little", {"--batch-size", "100000"}));
  EXPECT_TRUE(is_user_error(o, {"fewer than one", "smaller batch size"}));
  EXPECT_EQ(o.log.find("drop_last"), std::string::npos) << "a setting qad distill does not have: " << o.log;
}

TEST_F(BadInputTest, DistillWarnsBeyondTheTeachersContext) {
  // 240 stories hold ~20k tokens: one row of 600 per batch leaves whole batches for training and validation.
  const auto o = qad(distill(root_ / "long_context", {"--method", "ptq", "--steps", "0", "--seq-len", "600",
                                                      "--batch-size", "1", "--set", "data.valid_fraction=0.2"}));
  ASSERT_TRUE(o.exited(0)) << o.describe();
  EXPECT_NE(o.log.find("--seq-len (600 positions) is longer than " + stories260k().string() +
                       "'s max_position_embeddings (512)"), std::string::npos) << o.log;
}

TEST_F(BadInputTest, DistillRefusesAForeignDirectoryAndAFailedStartLeavesNothing) {
  const auto foreign = root_ / "foreign";
  fs::create_directories(foreign);
  write(foreign / "notes.txt", "mine");
  EXPECT_TRUE(is_user_error(qad(distill(foreign)), {"--out", "not empty", "no qad run"}));
  EXPECT_EQ(slurp(foreign / "notes.txt"), "mine");
  EXPECT_FALSE(fs::exists(foreign / "run.json"));

  // A start that fails after the directory was claimed (a teacher that is not a model): nothing is left.
  const auto fresh = root_ / "fresh", empty = root_ / "empty_out";
  fs::create_directories(empty);
  for (const auto& out : {fresh, empty}) {
    auto a = distill(out);
    a[std::find(a.begin(), a.end(), "--teacher") - a.begin() + 1] = (root_ / "a_dir_without_model").string();
    fs::create_directories(root_ / "a_dir_without_model");
    const auto o = qad(a);
    EXPECT_TRUE(o.exited(1)) << o.describe();
  }
  EXPECT_FALSE(fs::exists(fresh)) << "a failed start left --out behind";
  EXPECT_TRUE(fs::is_empty(empty)) << "a failed start left files in --out";
}

}  // namespace
}  // namespace qad::cli_test
