// Run directories: the committed fixtures (a truncated last line, a bad line mid-file, a re-logged step)
// and synthetic edge cases (NaN literals, layer order, missing files).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "util/remove_tree.h"
#include "report/run_reader.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace {
using namespace qad::report;
namespace fs = std::filesystem;

const fs::path kRuns = fs::path(QAD_SOURCE_DIR) / "tests/report/fixtures/runs";

bool has_warning(const RunData& r, const std::string& needle) {
  for (const auto& w : r.warnings) {
    if (w.find(needle) != std::string::npos) return true;
  }
  return false;
}

fs::path fresh_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("qad_report_" + name + "_" + std::to_string(::getpid()));
  ::qad::remove_tree(d);
  fs::create_directories(d);
  return d;
}

TEST(RunReader, TruncatedLastLineIsAWarningWithFileAndLine) {
  const RunData r = read_run(kRuns / "cka_qad");
  EXPECT_EQ(r.name, "qwen3-16m CKA-QAD");
  EXPECT_EQ(r.method, "cka-qad");
  EXPECT_TRUE(has_warning(r, "cka_qad/metrics.jsonl:48: truncated last line")) << ::testing::PrintToString(r.warnings);
  EXPECT_EQ(r.warnings.size(), 1u) << ::testing::PrintToString(r.warnings);
  // Steps 0, 20, ..., 800 train; validation every 160 steps.
  ASSERT_EQ(r.train.size(), 41u);
  EXPECT_EQ(r.train.back().step, 800);
  ASSERT_EQ(r.valid.size(), 6u);
  EXPECT_EQ(r.valid[1].step, 160);
  EXPECT_EQ(r.train.back().get("tokens"), 800.0 * 2048);
  EXPECT_FALSE(r.train.back().get("ce").has_value());  // absent fields stay absent
  const auto& last = r.valid.back();
  ASSERT_EQ(last.cka.size(), 8u);
  EXPECT_EQ(last.cka[0].layer, "layers.0");
  EXPECT_EQ(last.cka[7].layer, "layers.7");
  EXPECT_EQ(r.layer_names().size(), 8u);
  EXPECT_EQ(r.config["cka_lambda"], 0.1);
  ASSERT_NE(r.final_metric("arith.accuracy"), nullptr);  // nested objects flatten with dots
  EXPECT_EQ(r.final_metric("arith.accuracy")->number, 0.561);
}

TEST(RunReader, BadLineMidFileIsSkippedAndReloggedStepKeepsTheLaterLine) {
  const RunData r = read_run(kRuns / "qad");
  EXPECT_TRUE(has_warning(r, "qad/metrics.jsonl:11: not valid JSON")) << ::testing::PrintToString(r.warnings);
  EXPECT_TRUE(has_warning(r, "1 step(s) were logged more than once"));
  ASSERT_EQ(r.train.size(), 41u);
  const auto it = std::find_if(r.train.begin(), r.train.end(), [](const MetricRecord& m) { return m.step == 300; });
  ASSERT_NE(it, r.train.end());
  EXPECT_EQ(it->get("kl"), 0.1128);
  EXPECT_EQ(it->line, 21u);
  EXPECT_TRUE(std::is_sorted(r.train.begin(), r.train.end(),
                             [](const MetricRecord& a, const MetricRecord& b) { return a.step < b.step; }));
}

TEST(RunReader, SyntheticEdgeCases) {
  const auto d = fresh_dir("edge");
  qad::write_file_atomic(d / "metrics.jsonl",
                         "{\"type\":\"train\",\"step\":1,\"loss\":NaN,\"kl\":Infinity,\"note\":\"NaN in a string\","
                         "\"cka\":{\"layers.10\":0.9,\"layers.2\":0.8,\"layers.1\":null}}\n"
                         "\n"
                         "{\"type\":\"train\",\"loss\":1}\n"
                         "{\"type\":\"eval\",\"step\":3}\n"
                         "{\"type\":\"eval\",\"step\":4}\n"
                         "[1,2]\n"
                         "{\"type\":\"valid\",\"step\":-1}\n"
                         "{\"type\":\"valid\",\"step\":5,\"kl\":0.5,\"cka\":[1]}\n");
  const RunData r = read_run(d);
  EXPECT_EQ(r.name, d.filename().string());  // no run.json: the directory name
  EXPECT_EQ(r.method, "unknown");
  ASSERT_EQ(r.train.size(), 1u);
  EXPECT_TRUE(std::isnan(*r.train[0].get("loss")));
  EXPECT_TRUE(std::isinf(*r.train[0].get("kl")));
  ASSERT_EQ(r.train[0].cka.size(), 3u);
  EXPECT_EQ(r.train[0].cka[0].layer, "layers.1");
  EXPECT_TRUE(std::isnan(r.train[0].cka[0].value));
  EXPECT_EQ(r.train[0].cka[1].layer, "layers.2");
  EXPECT_EQ(r.train[0].cka[2].layer, "layers.10");
  ASSERT_EQ(r.valid.size(), 1u);
  EXPECT_TRUE(r.valid[0].cka.empty());
  const std::string f = (d / "metrics.jsonl").string();
  EXPECT_TRUE(has_warning(r, f + ":3: \"step\" is missing"));
  EXPECT_TRUE(has_warning(r, f + ":4: unknown record type \"eval\""));
  EXPECT_FALSE(has_warning(r, f + ":5:"));  // an unknown type is reported once
  EXPECT_TRUE(has_warning(r, f + ":6: not a JSON object"));
  EXPECT_TRUE(has_warning(r, f + ":7: \"step\" is missing or not a non-negative integer"));
  EXPECT_TRUE(has_warning(r, f + ":8: \"cka\" is not an object"));
  EXPECT_TRUE(has_warning(r, "run.json: missing"));
  ::qad::remove_tree(d);
}

TEST(RunReader, DirectoriesThatAreNotRunsAreErrors) {
  const auto d = fresh_dir("empty");
  try {
    read_run(d);
    FAIL() << "no exception";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a run directory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_run(d / "missing"), qad::Error);
  // A run.json that is not an object is a warning, not an error.
  qad::write_file_atomic(d / "run.json", "[\"not an object\"");
  const RunData r = read_run(d);
  EXPECT_TRUE(has_warning(r, "run.json: not a JSON object"));
  ::qad::remove_tree(d);
}

TEST(RunReader, NaturalOrder) {
  EXPECT_TRUE(natural_less("layers.2", "layers.10"));
  EXPECT_FALSE(natural_less("layers.10", "layers.2"));
  EXPECT_TRUE(natural_less("layers.2.mlp", "layers.2.self_attn"));
  EXPECT_TRUE(natural_less("a", "ab"));
  EXPECT_FALSE(natural_less("a", "a"));
  EXPECT_TRUE(natural_less("layers.02", "layers.3"));
}

}  // namespace
