// The summary from constructed cell directories: metrics read from final_metrics.json and eval.json, groups
// and pairs per variant, failed and unfinished cells, and the three files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <map>

#include "experiment/cell_metrics.h"
#include "experiment/summary.h"
#include "experiment/summary_files.h"
#include "experiment_test_util.h"
#include "util/error.h"

namespace qad::experiment {
namespace {
namespace fs = std::filesystem;

void finished_cell(const fs::path& out, const std::string& name, const std::string& final_metrics) {
  testing::write_text(cell_paths(out, name).run_dir / "final_metrics.json", final_metrics);
}

TEST(CellMetrics, FlattensFinalMetricsAndEval) {
  const auto m = metrics_from_final(nlohmann::json::parse(
      R"({"steps": 10, "tokens": 640, "train_seconds": 2.5, "kl": 0.1, "ppl": null, "ce": 3.0, "agreement": 0.9,
          "mean_cka": 0.95, "task_accuracy": 0.5, "cka": {"layers.0": 0.97, "layers.1": 0.93},
          "best": {"metric": "kl", "value": 0.09, "step": 5, "dir": "x"}})"));
  EXPECT_EQ(m, (MetricValues{{"steps", 10}, {"tokens", 640}, {"train_seconds", 2.5}, {"kl", 0.1}, {"ce", 3.0},
                             {"agreement", 0.9}, {"mean_cka", 0.95}, {"task_accuracy", 0.5},
                             {"cka.layers.0", 0.97}, {"cka.layers.1", 0.93}}));
  const auto e = metrics_from_eval(nlohmann::json::parse(
      R"({"model": "m", "nll": 1.0, "perplexity": 2.718, "teacher_nll": 0.9, "kl": 0.05, "top1_agreement": 0.9,
          "tasks": {"accuracy": 0.979, "by_group": {"add": {"n": 10, "accuracy": 1.0}}, "seconds": 3}})"));
  EXPECT_EQ(e, (MetricValues{{"eval.nll", 1.0}, {"eval.perplexity", 2.718}, {"eval.kl", 0.05},
                             {"eval.top1_agreement", 0.9}, {"eval.accuracy", 0.979}, {"eval.accuracy.add", 1.0}}));
}

TEST(CellMetrics, DirectionAndOrder) {
  EXPECT_EQ(metric_direction("kl"), -1);
  EXPECT_EQ(metric_direction("eval.perplexity"), -1);
  EXPECT_EQ(metric_direction("mean_cka"), 1);
  EXPECT_EQ(metric_direction("cka.layers.3"), 1);
  EXPECT_EQ(metric_direction("eval.accuracy.add"), 1);
  EXPECT_EQ(metric_direction("train_seconds"), 0);
  EXPECT_EQ(order_metrics({"train_seconds", "cka.layers.10", "cka.layers.2", "eval.accuracy", "ce", "kl", "zz"}),
            (std::vector<std::string>{"kl", "eval.accuracy", "ce", "cka.layers.2", "cka.layers.10", "zz",
                                      "train_seconds"}));
}

TEST(Summary, PairsWithinEachVariantAndListsFailedAndUnfinishedCells) {
  const Grid g = parse_grid("teacher: T\ndata: D\nmethods: [qad, cka-qad]\nvary: {loss.cka: [0.1, 1]}\n"
                            "seeds: [1, 2]\n",
                            "exp.yaml");
  const auto out = testing::fresh_dir("summary");
  // λ = 0.1: both methods, both seeds. λ = 1: cka-qad seed 2 failed, qad seed 2 never ran.
  finished_cell(out, "qad__loss.cka=0.1__seed1", R"({"kl": 0.20})");
  finished_cell(out, "qad__loss.cka=0.1__seed2", R"({"kl": 0.30})");
  finished_cell(out, "cka-qad__loss.cka=0.1__seed1", R"({"kl": 0.10})");
  finished_cell(out, "cka-qad__loss.cka=0.1__seed2", R"({"kl": 0.22})");
  finished_cell(out, "qad__loss.cka=1__seed1", R"({"kl": 0.5})");
  finished_cell(out, "cka-qad__loss.cka=1__seed1", R"({"kl": 0.4})");
  const auto failed = cell_paths(out, "cka-qad__loss.cka=1__seed2");
  fs::create_directories(failed.dir);
  write_status(failed, {{"state", "failed"}, {"phase", "distill"}, {"exit", "qad distill exited with status 1"},
                        {"exit_code", 1}, {"log_tail", {"qad: error: out of memory"}}});

  const Summary s = summarize(g, out);
  EXPECT_EQ(s.count("finished"), 6u);
  EXPECT_EQ(s.count("failed"), 1u);
  EXPECT_EQ(s.count("not run"), 1u);
  ASSERT_EQ(s.groups.size(), 4u);
  EXPECT_EQ(s.groups[0].name, "qad__loss.cka=0.1");
  EXPECT_NEAR(s.groups[0].metrics.at("kl").mean, 0.25, 1e-15);
  EXPECT_NEAR(*s.groups[0].metrics.at("kl").std_dev, std::sqrt(0.005), 1e-15);  // (0.05² + 0.05²) / 1
  EXPECT_EQ(s.groups[3].name, "cka-qad__loss.cka=1");
  EXPECT_EQ(s.groups[3].cells, 2u);
  EXPECT_EQ(s.groups[3].seeds, (std::vector<uint64_t>{1}));
  EXPECT_FALSE(s.groups[3].metrics.at("kl").std_dev);

  ASSERT_EQ(s.paired.size(), 2u);
  EXPECT_EQ(s.paired[0].variant, "loss.cka=0.1");
  EXPECT_EQ(s.paired[0].diff.differences.size(), 2u);
  EXPECT_NEAR(s.paired[0].diff.differences[0], -0.10, 1e-15);
  EXPECT_NEAR(s.paired[0].diff.differences[1], -0.08, 1e-15);
  EXPECT_NEAR(s.paired[0].diff.stats.mean, -0.09, 1e-15);
  // n = 2: t(0.975; 1) = 12.706 · 0.01 = ±0.127: within noise.
  EXPECT_EQ(s.paired[0].verdict, "within noise");
  EXPECT_EQ(s.paired[1].variant, "loss.cka=1");
  EXPECT_EQ(s.paired[1].diff.seeds, (std::vector<uint64_t>{1}));
  EXPECT_EQ(s.paired[1].verdict, "too few seeds");

  write_summary_files(s, out);
  const std::string md = testing::read_text(out / "summary.md");
  EXPECT_NE(md.find("6 of 8 cells finished, 1 failed"), std::string::npos) << md;
  EXPECT_EQ(md.find("ran at once"), std::string::npos) << md;  // one cell at a time: no note
  EXPECT_NE(md.find("| cka-qad − qad (loss.cka=0.1) | kl | 2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("- `cka-qad__loss.cka=1__seed2`: qad distill exited with status 1 (phase distill)"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("`qad__loss.cka=1__seed2` (not run)"), std::string::npos) << md;
  const auto j = nlohmann::json::parse(testing::read_text(out / "summary.json"));
  EXPECT_EQ(j["failed"], nlohmann::json({"cka-qad__loss.cka=1__seed2"}));
  EXPECT_EQ(j["unfinished"], nlohmann::json({"qad__loss.cka=1__seed2"}));
  EXPECT_EQ(j["cells"][7]["log_tail"][0], "qad: error: out of memory");
  EXPECT_TRUE(j["groups"][3]["metrics"]["kl"]["std"].is_null());
  const auto csv = testing::read_lines(out / "summary.csv");
  EXPECT_EQ(csv[0], "table,name,variant,metric,n,mean,std,stderr,ci95_low,ci95_high,verdict");
  EXPECT_NE(std::find(csv.begin(), csv.end(), "cell,qad__loss.cka=1__seed1,,kl,1,0.5,,,,,"), csv.end());
  ::qad::remove_tree(out);
}

TEST(Summary, MeanCkaOverOtherLayersGetsNoVerdict) {
  // An older cka-qad run averaged its validation CKA over the loss's layers only (layers.2 here), QAD over all
  // three: their mean_cka values are different metrics, and the per-layer ones still pair.
  const Grid g = parse_grid("teacher: T\ndata: D\nmethods: [qad, cka-qad]\nseeds: [1, 2]\n", "exp.yaml");
  const auto out = testing::fresh_dir("summary_cka_layers");
  for (int seed : {1, 2}) {
    const double d = 0.001 * seed;
    finished_cell(out, "qad__seed" + std::to_string(seed),
                  fmt::format(R"({{"mean_cka": {}, "train_seconds": {}, "cka": {{"layers.0": 0.99, "layers.1": 0.98, )"
                              R"("layers.2": {}}}}})",
                              0.98 + d, 30 + seed, 0.97 + d));
    finished_cell(out, "cka-qad__seed" + std::to_string(seed),
                  fmt::format(R"({{"mean_cka": {}, "cka": {{"layers.2": {}}}}})", 0.975 + d, 0.975 + d));
  }
  // The cells ran four at a time on one GPU: their times are not a speed comparison, which the summary says.
  write_status(cell_paths(out, "qad__seed1"), {{"state", "finished"}, {"cells_at_once", 4}});
  const Summary s = summarize(g, out);
  write_summary_files(s, out);
  EXPECT_NE(testing::read_text(out / "summary.md").find("up to 4 cells ran at once on one device"), std::string::npos);
  std::map<std::string, std::string> verdicts;
  for (const auto& p : s.paired) verdicts[p.metric] = p.verdict;
  EXPECT_EQ(verdicts.at("mean_cka"), "not comparable: mean over 1 layer(s) vs 3");
  EXPECT_EQ(verdicts.at("cka.layers.2"), "cka-qad > qad beyond noise (better)");  // +0.005 on both seeds
  ::qad::remove_tree(out);
}

TEST(Summary, AFileThatIsNotJsonIsNamed) {
  const Grid g = parse_grid("teacher: T\ndata: D\nmethods: [qad]\n", "exp.yaml");
  const auto out = testing::fresh_dir("summary_bad");
  finished_cell(out, "qad__seed1", "{not json");
  try {
    summarize(g, out);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qad__seed1/run/final_metrics.json: not a JSON object"), std::string::npos)
        << e.what();
  }
  ::qad::remove_tree(out);
}

}  // namespace
}  // namespace qad::experiment
