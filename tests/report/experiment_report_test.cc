// The experiment page of qad report from a constructed summary.json: the group table (mean ± std, n), the paired
// differences with intervals and verdicts, one chart per headline metric and the per-layer CKA chart with an
// error bar per point at the 95 % interval, and a clear error for a file that is not a summary.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "report/experiment_report.h"
#include "util/error.h"
#include "util/remove_tree.h"
#include "xml_check.h"

namespace {
using namespace qad::report;
namespace fs = std::filesystem;

nlohmann::json stat(double mean, double std, double lo, double hi) {
  return {{"mean", mean}, {"std", std}, {"n", 3}, {"stderr", std / 1.7320508}, {"ci95", {lo, hi}}};
}

nlohmann::json summary() {
  nlohmann::json g1 = {{"name", "qad"}, {"method", "qad"}, {"variant", ""}, {"cells", 3}, {"seeds", {1, 2, 3}}};
  g1["metrics"] = {{"kl", stat(0.0887, 0.0025, 0.0824, 0.0950)},
                   {"cka.layers.0", stat(0.9924, 2e-5, 0.9923, 0.9925)},
                   {"cka.layers.10", stat(0.9915, 1e-4, 0.9912, 0.9918)},
                   {"cka.layers.2", stat(0.9886, 1.5e-4, 0.9882, 0.9890)}};
  nlohmann::json g2 = g1;
  g2["name"] = "cka-qad";
  g2["method"] = "cka-qad";
  g2["metrics"]["kl"] = stat(0.0877, 0.0003, 0.0870, 0.0885);
  nlohmann::json paired = {{{"a", "cka-qad"}, {"b", "qad"}, {"variant", ""}, {"metric", "kl"}, {"n", 3},
                            {"mean", -0.00096}, {"std", 0.0028}, {"ci95", {-0.00797, 0.00605}},
                            {"verdict", "within noise"}}};
  return {{"experiment", "smoke"}, {"cells_finished", 6}, {"cells_total", 6}, {"failed", nlohmann::json::array()},
          {"groups", {g1, g2}}, {"paired", paired}};
}

TEST(ExperimentReport, TablesChartsAndErrorBars) {
  const auto html = render_experiment_report(summary(), "exp", "summary.json");
  for (const char* part : {"experiment <b>smoke</b>: 6 of 6 cells finished", "0.0887 ± 0.0025 (n 3)",
                           "0.0877 ± 0.0003 (n 3)", "cka-qad − qad", "[-0.00797, 0.00605]", "within noise",
                           "held-out KL to the teacher", "per-layer CKA with the teacher"}) {
    EXPECT_NE(html.find(part), std::string::npos) << part;
  }
  // Error bars: one per group in the KL chart, one per group and layer in the CKA chart: 2 + 2 x 3.
  size_t bars = 0;
  for (size_t at = html.find("class=\"error-bar\""); at != std::string::npos; at = html.find("class=\"error-bar\"", at + 1)) ++bars;
  EXPECT_EQ(bars, 8u);
  // Layers in index order: 0, 2, 10 (not the string order 0, 10, 2).
  const auto l2 = html.find(">2</text>"), l10 = html.find(">10</text>");
  ASSERT_NE(l2, std::string::npos);
  ASSERT_NE(l10, std::string::npos);
  EXPECT_LT(l2, l10);
  // Every SVG on the page is well-formed.
  for (size_t at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1)) {
    const auto end = html.find("</svg>", at);
    ASSERT_NE(end, std::string::npos);
    const auto doc = qad::testing::parse_xml(std::string_view(html).substr(at, end + 6 - at));
    EXPECT_TRUE(doc.error.empty()) << doc.error;
  }
}

TEST(ExperimentReport, NotASummaryIsANamedError) {
  try {
    render_experiment_report(nlohmann::json{{"cells", 1}}, "exp", "/x/summary.json");
    ADD_FAILURE() << "expected an error";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/x/summary.json: no \"groups\" array"), std::string::npos) << e.what();
  }
  auto dir = fs::temp_directory_path() / ("qad_exp_report_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  EXPECT_FALSE(is_experiment_dir(dir));
  std::ofstream(dir / "summary.json") << summary().dump();
  std::ofstream(dir / "grid.json") << "{}";
  EXPECT_TRUE(is_experiment_dir(dir));
  write_experiment_report(dir, dir / "report.html", "exp");
  EXPECT_GT(fs::file_size(dir / "report.html"), 1000u);
  qad::remove_tree(dir);
}

}  // namespace
