// Figures that different commands compute must be the same quantity (issue #22, "comparable figures"): the
// perplexity of distill's validation equals `qad eval`'s on the same data and window length; `qad distill
// --method ptq` and `qad quantize` calibrate on the same rows and export the same model; --doc-end means the
// same tokens everywhere; `qad generate --chat` renders the model's chat template. stories260K and
// qwen3-16m-teacher on the CPU.
#include "cli/cli_test_util.h"
#include "util/remove_tree.h"

namespace qad::cli_test {
namespace {

fs::path qwen3_16m() { return shared_dir() / "models" / "qwen3-16m-teacher"; }

class FiguresTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = scratch_root("figures");
    write_stories(root_ / "train.jsonl", 200, 11);
    write_stories(root_ / "valid.jsonl", 40, 12);
  }
  static void TearDownTestSuite() { ::qad::remove_tree(root_); }
  static Outcome qad(const std::vector<std::string>& args, const std::string& log = "log.txt") {
    return run_qad(args, root_ / log);
  }
  static nlohmann::json last_record(const fs::path& metrics, const std::string& type) {
    nlohmann::json last;
    std::istringstream in(slurp(metrics));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j.value("type", "") == type) last = j;
    }
    return last;
  }
  static inline fs::path root_;
};

TEST_F(FiguresTest, DistillValidationAndEvalGiveTheSamePerplexity) {
  const auto run = root_ / "ptq_run";
  auto o = qad({"distill", "--method", "ptq", "--teacher", stories260k().string(), "--data",
                (root_ / "train.jsonl").string(), "--valid-data", (root_ / "valid.jsonl").string(), "--out",
                run.string(), "--device", "cpu", "--seq-len", "32", "--batch-size", "4", "--valid-batches", "100000",
                "--calib-batches", "2"});
  ASSERT_TRUE(o.exited(0)) << o.describe();
  const auto v = last_record(run / "metrics.jsonl", "valid");
  ASSERT_TRUE(v.is_object()) << slurp(run / "metrics.jsonl");
  EXPECT_EQ(v.at("seq_len").get<int64_t>(), 32) << "the validation says at which window length it measured";
  const int64_t tokens = v.at("tokens_evaluated").get<int64_t>();
  ASSERT_GT(tokens, 1000);
  EXPECT_EQ(tokens % (32 * 4), 0) << "whole batches of 4 windows of 32 targets";
  EXPECT_NE(o.log.find(fmt::format("(seq 32, {} tokens)", tokens)), std::string::npos) << o.log;

  // qad eval on the same text, window, batch and number of targets: the same windows in the same forwards, so
  // the same perplexity. (The batch matters at the 1e-3 level for an NVFP4 model: another GEMM blocking moves
  // activations by an ulp, which flips a few FP4 roundings; docs/eval.md.)
  o = qad({"eval", "--model", (run / "export" / "nvfp4").string(), "--data", (root_ / "valid.jsonl").string(),
           "--seq-len", "32", "--batch-size", "4", "--max-tokens", std::to_string(tokens), "--device", "cpu",
           "--json"},
          "eval.log");
  ASSERT_TRUE(o.exited(0)) << o.describe();
  const auto e = nlohmann::json::parse(o.log.substr(o.log.find('{')));
  const double eval_ppl = e.at("perplexity").get<double>();
  const double valid_ppl = v.at("ppl").get<double>();
  EXPECT_EQ(e.at("data").at("scored_tokens").get<int64_t>(), tokens) << e.dump();
  EXPECT_NEAR(eval_ppl / valid_ppl, 1.0, 1e-9) << "eval " << eval_ppl << " vs validation " << valid_ppl;
}

TEST_F(FiguresTest, DistillPtqAndQuantizeCalibrateOnTheSameRowsAndExportTheSameModel) {
  const auto data = root_ / "calib_data";
  auto o = qad({"data", "prepare", "--tokenizer", stories260k().string(), "--input", (root_ / "train.jsonl").string(),
                "--out", data.string()});
  ASSERT_TRUE(o.exited(0)) << o.describe();
  const std::vector<std::string> same = {"--seq-len", "32", "--batch-size", "4", "--calib-samples", "10",
                                         "--device", "cpu"};
  o = qad(with_flags({"quantize", "--model", stories260k().string(), "--calib-data", data.string(), "--out",
                      (root_ / "quantized").string()}, same));
  ASSERT_TRUE(o.exited(0)) << o.describe();
  o = qad(with_flags({"distill", "--method", "ptq", "--teacher", stories260k().string(), "--data", data.string(),
                      "--out", (root_ / "ptq_same").string(), "--set", "data.valid_fraction=0"}, same));
  ASSERT_TRUE(o.exited(0)) << o.describe();
  const auto q = slurp(root_ / "quantized" / "model.safetensors");
  const auto d = slurp(root_ / "ptq_same" / "export" / "nvfp4" / "model.safetensors");
  ASSERT_FALSE(q.empty());
  EXPECT_TRUE(q == d) << "the two PTQ baselines differ";

  // Another order of the rows (the seed) calibrates on other rows: the input scales change.
  o = qad(with_flags({"quantize", "--model", stories260k().string(), "--calib-data", data.string(), "--out",
                      (root_ / "quantized_seed1").string(), "--seed", "1"}, same));
  ASSERT_TRUE(o.exited(0)) << o.describe();
  EXPECT_FALSE(slurp(root_ / "quantized_seed1" / "model.safetensors") == q) << "the test could not tell them apart";

  // Static MSE block scales: qad quantize --block-scales and qad distill's quant.options.block_scales (its --set
  // key) make the same model, another one than the dynamic scales' (the weight_scale bytes differ).
  o = qad(with_flags({"quantize", "--model", stories260k().string(), "--calib-data", data.string(), "--out",
                      (root_ / "quantized_static").string(), "--block-scales", "static_mse"}, same));
  ASSERT_TRUE(o.exited(0)) << o.describe();
  o = qad(with_flags({"distill", "--method", "ptq", "--teacher", stories260k().string(), "--data", data.string(),
                      "--out", (root_ / "ptq_static").string(), "--set", "data.valid_fraction=0", "--set",
                      "quant.options.block_scales=static_mse"}, same));
  ASSERT_TRUE(o.exited(0)) << o.describe();
  const auto qs = slurp(root_ / "quantized_static" / "model.safetensors");
  EXPECT_TRUE(qs == slurp(root_ / "ptq_static" / "export" / "nvfp4" / "model.safetensors"))
      << "the two static PTQ baselines differ";
  EXPECT_FALSE(qs == q) << "static block scales must change the export";
}

TEST_F(FiguresTest, DocEndMeansTheSameTokensInPrepareAndEval) {
  // One document, "<|endoftext|>" after it: prepare records the id, eval's stream holds one more token.
  write(root_ / "one.jsonl", "{\"text\": \"Lily saw a big red ball.\"}\n");
  for (const std::string spec : {"eos", "none"}) {
    const auto out = root_ / ("doc_end_" + spec);
    auto o = qad({"data", "prepare", "--tokenizer", stories260k().string(), "--input", (root_ / "one.jsonl").string(),
                  "--out", out.string(), "--doc-end", spec});
    ASSERT_TRUE(o.exited(0)) << o.describe();
    const auto index = nlohmann::json::parse(slurp(out / "index.json"));
    if (spec == "none") {
      EXPECT_TRUE(index.at("doc_end").is_null()) << index.dump();
    } else {
      EXPECT_EQ(index.at("doc_end"), index.at("encoder").at("eos_id")) << index.dump();
    }
  }
  const auto eos = nlohmann::json::parse(slurp(root_ / "doc_end_eos" / "index.json"));
  const auto none = nlohmann::json::parse(slurp(root_ / "doc_end_none" / "index.json"));
  EXPECT_EQ(eos.at("tokens").get<int64_t>(), none.at("tokens").get<int64_t>() + 1);
  EXPECT_TRUE(is_user_error(qad({"data", "prepare", "--tokenizer", stories260k().string(), "--input",
                                 (root_ / "one.jsonl").string(), "--out", (root_ / "bad_doc_end").string(),
                                 "--doc-end", "<|no-such-token|>"}),
                            {"--doc-end", "<|no-such-token|>"}));
}

TEST_F(FiguresTest, GenerateChatRendersTheChatTemplateAndTheTeacherAnswers) {
  // An arith task's prompt is the chat template with the assistant's turn opened (the teacher answers this one
  // correctly on the CPU in FP32; it gets some multiplications wrong).
  const std::string question = "Compute 12 + 30.";
  const std::string rendered = "<|im_start|>user\n" + question + "<|im_end|>\n<|im_start|>assistant\n";
  auto chat = qad({"generate", "--model", qwen3_16m().string(), "--chat", "--prompt", question, "--greedy",
                   "--max-new-tokens", "120", "--device", "cpu", "--json"}, "chat.log");
  ASSERT_TRUE(chat.exited(0)) << chat.describe();
  auto plain = qad({"generate", "--model", qwen3_16m().string(), "--prompt", rendered, "--max-new-tokens", "0",
                    "--device", "cpu", "--json"}, "plain.log");
  ASSERT_TRUE(plain.exited(0)) << plain.describe();
  const auto c = nlohmann::json::parse(chat.log.substr(chat.log.find('{'))).at("outputs").at(0);
  const auto p = nlohmann::json::parse(plain.log.substr(plain.log.find('{'))).at("outputs").at(0);
  EXPECT_EQ(c.at("prompt_ids"), p.at("prompt_ids"));
  const auto text = c.at("text").get<std::string>();
  const auto think_end = text.find("</think>");
  ASSERT_NE(think_end, std::string::npos) << text;
  EXPECT_NE(text.find("42", think_end), std::string::npos) << "the teacher's answer to 12 + 30:\n" << text;
  EXPECT_TRUE(is_user_error(qad({"generate", "--model", qwen3_16m().string(), "--chat", "--prompt-ids", "1,2",
                                 "--device", "cpu"}), {"--chat"}));
}

}  // namespace
}  // namespace qad::cli_test
