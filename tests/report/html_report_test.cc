// The HTML report over the fixture runs: every run named, every chart a well-formed SVG, nothing fetched
// from outside, the summary's numbers, warnings shown, and an atomic write.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "util/remove_tree.h"
#include "report/html_report.h"
#include "report/ticks.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "xml_check.h"

namespace {
using namespace qad::report;
namespace fs = std::filesystem;

const fs::path kRuns = fs::path(QAD_SOURCE_DIR) / "tests/report/fixtures/runs";

std::vector<RunData> fixture_runs() {
  return {read_run(kRuns / "ptq"), read_run(kRuns / "qad"), read_run(kRuns / "cka_qad")};
}

std::vector<std::string> svgs_in(const std::string& html) {
  std::vector<std::string> out;
  for (size_t p = html.find("<svg"); p != std::string::npos; p = html.find("<svg", p + 1)) {
    const size_t end = html.find("</svg>", p);
    EXPECT_NE(end, std::string::npos);
    out.push_back(html.substr(p, end + 6 - p));
  }
  return out;
}

size_t count_of(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

TEST(HtmlReport, ContainsEveryRunAndOnlyWellFormedSvgs) {
  const auto runs = fixture_runs();
  const std::string html = render_html_report(runs, {"QAD vs CKA-QAD"});
  for (const auto& r : runs) EXPECT_NE(html.find(r.name), std::string::npos) << r.name;
  const auto svgs = svgs_in(html);
  // Evaluation (QAD and CKA-QAD have eval.json): task accuracy, ppl, KL, agreement; training: loss, kl, cka_loss
  // (no run logs ce); validation: kl, mean CKA, ppl, agreement; one per-layer chart; one heatmap per trained run
  // (PTQ has none); system: lr, grad norm, throughput, memory.
  EXPECT_EQ(svgs.size(), 4u + 3u + 4u + 1u + 2u + 4u);
  std::set<std::string> ids;
  for (const auto& svg : svgs) {
    const auto doc = qad::testing::parse_xml(svg);
    EXPECT_EQ(doc.error, "") << svg.substr(0, 200);
    if (doc.error.empty()) {
      EXPECT_TRUE(ids.insert(doc.elements[0].attrs.at("id")).second) << "duplicate chart id";
    }
  }
  // Self-contained: no scripts, no external resources; the only URLs are the SVG namespace.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(count_of(html, "http"), svgs.size());
  EXPECT_EQ(html, render_html_report(runs, {"QAD vs CKA-QAD"}));  // deterministic
}

TEST(HtmlReport, SummaryShowsLastValuesAndFinalMetrics) {
  const Table t = summary_table(fixture_runs()).table;
  ASSERT_EQ(t.rows.size(), 3u);
  const auto col = [&](const std::string& name) {
    return static_cast<size_t>(std::find(t.columns.begin(), t.columns.end(), name) - t.columns.begin());
  };
  ASSERT_LT(col("final arith.accuracy"), t.columns.size());
  EXPECT_EQ(t.rows[0][col("method")], "ptq");
  EXPECT_EQ(t.rows[0][col("steps")], "0");
  EXPECT_EQ(t.rows[0][col("train loss")], "—");
  EXPECT_EQ(t.rows[0][col("valid KL")], "0.452");
  EXPECT_EQ(t.rows[2][col("steps")], "800");
  EXPECT_EQ(t.rows[2][col("tokens")], "1.64M");  // 800 * 2048
  EXPECT_EQ(t.rows[2][col("final arith.accuracy")], "0.561");
  EXPECT_EQ(t.rows[1][col("valid KL")], "0.055");  // the last validation, not final_metrics.json's made-up 0.051
  EXPECT_EQ(col("final kl"), t.columns.size());   // final_metrics.json's kl is the last validation's: no column
  // The worst layer at CKA-QAD's last validation is the deepest one in the fixture.
  const RunData cka = read_run(kRuns / "cka_qad");
  double worst = 1;
  for (const auto& l : cka.valid.back().cka) worst = std::min(worst, l.value);
  EXPECT_EQ(t.rows[2][col("worst layer CKA")], format_number(worst, 5));
}

TEST(HtmlReport, WarningsAndHostileNamesAreEscaped) {
  auto runs = fixture_runs();
  runs[0].name = "<script>alert(1)</script>";
  const std::string html = render_html_report(runs, {"t <b>"});
  EXPECT_EQ(html.find("<script>"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("<title>t &lt;b&gt;</title>"), std::string::npos);
  EXPECT_NE(html.find("metrics.jsonl:48: truncated last line"), std::string::npos);
  for (const auto& svg : svgs_in(html)) EXPECT_EQ(qad::testing::parse_xml(svg).error, "");
}

TEST(HtmlReport, WrittenAtomically) {
  const auto d = fs::temp_directory_path() / ("qad_report_html_" + std::to_string(::getpid()));
  ::qad::remove_tree(d);
  fs::create_directories(d);
  const auto runs = fixture_runs();
  write_html_report(d / "report.html", runs, {});
  EXPECT_EQ(qad::read_file(d / "report.html"), render_html_report(runs, {}));
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);  // no temporary left
  EXPECT_THROW(write_html_report(d / "no/such/dir/report.html", runs, {}), qad::Error);
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);
  ::qad::remove_tree(d);
}

}  // namespace
