// eval.json (qad eval --out): the figures and the settings that produced them, from the committed fixtures
// and from damaged files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "report/eval_reader.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/remove_tree.h"

namespace {
using namespace qad::report;
namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(QAD_SOURCE_DIR) / "tests/report/fixtures";

std::string setting(const EvalResult& r, const std::string& name) {
  for (const auto& s : r.settings) {
    if (s.name == name) return s.value;
  }
  return "(absent)";
}

TEST(EvalReader, FiguresAndSettingsOfAStudent) {
  std::vector<std::string> warnings;
  const EvalResult r = read_eval_json(kFixtures / "exports/ptq_nvfp4/eval.json", warnings);
  EXPECT_TRUE(warnings.empty()) << ::testing::PrintToString(warnings);
  EXPECT_EQ(r.perplexity, 21.3);
  EXPECT_EQ(r.kl, 0.43);
  EXPECT_EQ(r.agreement, 0.71);
  EXPECT_EQ(r.teacher_perplexity, 16.44);
  EXPECT_EQ(r.task_accuracy, 0.412);
  EXPECT_EQ(r.task_items, 1000);
  EXPECT_EQ(r.task_correct, 412);
  EXPECT_FALSE(r.avg_at_k.has_value());  // one sample per item: avg@1 is the accuracy
  EXPECT_EQ(setting(r, "data"), "data/heldout.jsonl");
  EXPECT_EQ(setting(r, "seq len"), "512");
  EXPECT_EQ(setting(r, "scored tokens"), "65536");
  EXPECT_EQ(setting(r, "ppl mode"), "packed");
  EXPECT_EQ(setting(r, "tasks"), "tasks/arith/test.jsonl");
  EXPECT_EQ(setting(r, "samples per item"), "1");
  EXPECT_EQ(setting(r, "temperature"), "0");
  EXPECT_EQ(setting(r, "KL against"), "/models/qwen3-16m-teacher");
  EXPECT_EQ(setting(r, "model"), "(absent)");  // not fake-quantized
}

TEST(EvalReader, TheTeachersOwnHasNoKl) {
  std::vector<std::string> warnings;
  const EvalResult r = read_eval_json(kFixtures / "teacher_eval.json", warnings);
  EXPECT_EQ(r.perplexity, 16.44);
  EXPECT_FALSE(r.kl.has_value());
  EXPECT_FALSE(r.agreement.has_value());
  EXPECT_EQ(setting(r, "KL against"), "(absent)");  // "teacher": null
}

TEST(EvalReader, DamagedFiles) {
  const auto d = fs::temp_directory_path() / ("qad_eval_reader_" + std::to_string(::getpid()));
  ::qad::remove_tree(d);
  fs::create_directories(d);
  std::vector<std::string> warnings;
  qad::write_file_atomic(d / "a.json", R"({"model":"m","perplexity":"high","tasks":{"accuracy":0.5,"samples":4,)"
                                       R"("avg_at_k":{"value":0.25}},"data":[1]})");
  const EvalResult r = read_eval_json(d / "a.json", warnings);
  EXPECT_FALSE(r.perplexity.has_value());
  EXPECT_EQ(r.task_accuracy, 0.5);
  EXPECT_EQ(r.avg_at_k, 0.25);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0], (d / "a.json").string() + ": \"perplexity\" is not a number; left out of the evaluation table");
  EXPECT_EQ(warnings[1], (d / "a.json").string() + ": \"data\" is not an object; left out of the evaluation table");
  qad::write_file_atomic(d / "b.json", R"({"perplexity": 3})");
  try {
    read_eval_json(d / "b.json", warnings);
    FAIL() << "no exception";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find((d / "b.json").string() + ": not a qad eval result"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("qad eval --model DIR ... --out"), std::string::npos);
  }
  EXPECT_THROW(read_eval_json(d / "missing.json", warnings), qad::Error);
  ::qad::remove_tree(d);
}

}  // namespace
