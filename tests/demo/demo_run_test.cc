// `qad demo --smoke` end to end through the qad binary (a 2-layer, 32-wide model, a few steps: seconds): the
// printed table and verdict, comparison.json with every method, and checkpoints that qad loads back (the
// teacher as an HF directory with its tokenizer, each student's NVFP4 export). Training quality is not asserted
// (the smoke budget learns nothing); the tiny preset's figures are in docs/train.md.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "checkpoint/load.h"
#include "demo/arith_task.h"
#include "model/causal_lm.h"
#include "tokenizer/tokenizer.h"
#include "train/student.h"
#include "util/remove_tree.h"

namespace fs = std::filesystem;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

TEST(DemoRun, SmokePipelineWritesTheTableAndLoadableCheckpoints) {
  const fs::path root = fs::temp_directory_path() / ("qad_demo_run_" + std::to_string(::getpid()));
  qad::remove_tree(root);
  fs::create_directories(root);
  const fs::path out = root / "demo", log = root / "log.txt";
  const std::string cmd = std::string(QAD_BINARY) + " demo --smoke --device cpu --out " + out.string() + " > " +
                          log.string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_all(log);
  const std::string text = read_all(log);
  for (const char* s : {"== 1/4", "== 2/4", "== 3/4", "== 4/4", "teacher (FP32)", "PTQ", "QAT", "QAD", "CKA-QAD",
                        "mean CKA", "layers.1", "verdict: "}) {
    EXPECT_NE(text.find(s), std::string::npos) << "'" << s << "' missing from the output:\n" << text;
  }

  const auto j = nlohmann::json::parse(read_all(out / "comparison.json"));
  ASSERT_EQ(j["results"].size(), 5u);
  const char* methods[] = {"teacher", "ptq", "qat", "qad", "cka-qad"};
  for (size_t i = 0; i < 5; ++i) {
    const auto& r = j["results"][i];
    EXPECT_EQ(r["method"], methods[i]);
    const double acc = r["accuracy"];
    EXPECT_TRUE(acc >= 0 && acc <= 1) << acc;
    if (i == 0) continue;
    const auto& m = r["metrics"];
    EXPECT_EQ(m["steps"].get<int64_t>(), i == 1 ? 0 : 2) << methods[i];
    const double kl = m["kl"], cka = m["mean_cka"];
    EXPECT_TRUE(std::isfinite(kl) && kl >= 0) << methods[i] << " kl " << kl;
    EXPECT_TRUE(cka > 0 && cka <= 1 + 1e-6) << methods[i] << " mean_cka " << cka;
    EXPECT_EQ(m["cka"].size(), 2u);
  }
  const auto verdict = j["verdict"].get<std::string>();
  // Accuracy gaps are judged against the evaluation's noise, named as the test's, and the one-seed caveat is stated.
  EXPECT_NE(verdict.find("questions: teacher vs PTQ"), std::string::npos) << verdict;
  EXPECT_NE(verdict.find("the test's noise"), std::string::npos) << verdict;
  EXPECT_NE(verdict.find("One training seed each, and the noise above is the test's alone"), std::string::npos)
      << verdict;
  EXPECT_TRUE(fs::exists(out / "comparison.md"));

  // The teacher is an HF checkpoint with its tokenizer: qad loads both and runs a prompt through it.
  const fs::path teacher = out / "teacher" / "export" / "hf";
  const auto tok = qad::tokenizer::Tokenizer::load(teacher);
  auto lm = qad::model::CausalLM::load(teacher, torch::kCPU, torch::kFloat32);
  const auto ids = tok.encode(qad::demo::chat_prompt("What is 12 + 34?"), false);
  const auto input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0);
  torch::NoGradGuard ng;
  const auto logits = lm->forward(input, {}).logits;
  EXPECT_EQ(logits.size(1), static_cast<int64_t>(ids.size()));
  EXPECT_EQ(logits.size(2), tok.vocab_size());
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  // Each student's NVFP4 export and its final training checkpoint (the run directory) load back.
  for (const char* run : {"ptq", "qat", "qad", "cka-qad"}) {
    auto s = qad::checkpoint::load_model(out / run / "export" / "nvfp4", torch::kCPU, torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(s->forward(input, {}).logits).all().item<bool>()) << run;
    if (std::string(run) == "ptq") continue;  // 0 steps: no checkpoint
    s = qad::checkpoint::load_model(out / run, torch::kCPU, torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(s->forward(input, {}).logits).all().item<bool>()) << run;
  }
  qad::remove_tree(root);
}

}  // namespace
