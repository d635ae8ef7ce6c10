// `qad report` comparing PTQ, QAD and CKA-QAD against the teacher (issue #22 item 4): the evaluation table's
// teacher row and accuracy column, PTQ drawn as a dashed baseline at its value (and only where its figures were
// measured like the others'), export directories, CSV / Markdown exports, compact settings, smoothing, per-heatmap
// colour scales and device-aware memory labels. Set QAD_REPORT_HTML=FILE to keep the acceptance report for a look.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "report/html_report.h"
#include "report/svg_common.h"
#include "report/ticks.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/remove_tree.h"
#include "xml_check.h"

namespace {
using namespace qad::report;
using qad::testing::parse_xml;
using qad::testing::XmlDoc;
using qad::testing::XmlElement;
namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(QAD_SOURCE_DIR) / "tests/report/fixtures";
const fs::path kRuns = kFixtures / "runs";

fs::path fresh_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("qad_compare_" + name + "_" + std::to_string(::getpid()));
  ::qad::remove_tree(d);
  fs::create_directories(d);
  return d;
}

EvalResult teacher_eval() {
  std::vector<std::string> warnings;
  auto t = read_eval_json(kFixtures / "teacher_eval.json", warnings);
  EXPECT_TRUE(warnings.empty()) << ::testing::PrintToString(warnings);
  return t;
}

// The issue's acceptance set: a PTQ export, a QAD run and a CKA-QAD run, each with an eval.json.
std::vector<RunData> acceptance_entries() {
  return {read_run(kFixtures / "exports/ptq_nvfp4"), read_run(kRuns / "qad"), read_run(kRuns / "cka_qad")};
}

// The SVG whose root has id `id`, parsed; fails the test when it is not in the page.
XmlDoc svg_with_id(const std::string& html, const std::string& id) {
  const size_t at = html.find("id=\"" + id + "\"");
  EXPECT_NE(at, std::string::npos) << "no chart " << id;
  if (at == std::string::npos) return {};
  const size_t start = html.rfind("<svg", at), end = html.find("</svg>", at);
  auto doc = parse_xml(html.substr(start, end + 6 - start));
  EXPECT_EQ(doc.error, "") << id;
  return doc;
}

const XmlElement* line_with(const XmlDoc& doc, const std::string& cls, const std::string& series = "") {
  for (const auto* e : doc.all("line")) {
    if (e->attrs.count("class") && e->attrs.at("class") == cls &&
        (series.empty() || (e->attrs.count("data-series") && e->attrs.at("data-series") == series))) {
      return e;
    }
  }
  return nullptr;
}

double attr(const XmlElement* e, const char* name) { return std::stod(e->attrs.at(name)); }

// The text of the <title> that directly follows element `e` in document order (a baseline's tooltip).
std::string title_after(const XmlDoc& doc, const XmlElement* e) {
  for (size_t i = 0; i + 1 < doc.elements.size(); ++i) {
    if (&doc.elements[i] == e && doc.elements[i + 1].name == "title") return doc.elements[i + 1].text;
  }
  return "";
}

// The <tr> of an HTML table whose first cell is `first`.
std::string table_row(const std::string& html, const std::string& first) {
  const size_t at = html.find("<tr><td>" + first + "</td>");
  if (at == std::string::npos) return "";
  return html.substr(at, html.find("</tr>", at) - at);
}

size_t column_of(const Table& t, const std::string& name) {
  return static_cast<size_t>(std::find(t.columns.begin(), t.columns.end(), name) - t.columns.begin());
}

TEST(CompareReport, PtqExportQadAndCkaQadAgainstTheTeacher) {
  const auto entries = acceptance_entries();
  EXPECT_EQ(entries[0].kind, EntryKind::kExport);
  EXPECT_EQ(entries[0].method, "ptq");  // qad's own export outside a run directory: qad quantize
  EXPECT_EQ(entries[0].name, "ptq_nvfp4");
  EXPECT_TRUE(entries[0].warnings.empty()) << ::testing::PrintToString(entries[0].warnings);
  ASSERT_TRUE(entries[1].eval.has_value());
  EXPECT_EQ(entries[1].eval->task_accuracy, 0.538);
  const EvalResult teacher = teacher_eval();

  // The evaluation table: the teacher first, then every entry; an accuracy column with the fixtures' values.
  const ComparisonTable t = evaluation_table(entries, &teacher);
  ASSERT_EQ(t.table.rows.size(), 4u);
  const size_t acc = column_of(t.table, "task accuracy"), ppl = column_of(t.table, "perplexity");
  const size_t kl = column_of(t.table, "KL(teacher ‖ model)");
  ASSERT_LT(acc, t.table.columns.size());
  ASSERT_LT(kl, t.table.columns.size());
  EXPECT_EQ(t.table.rows[0][0], "teacher: qwen3-16m-teacher");
  EXPECT_EQ(t.table.rows[0][1], "teacher");
  EXPECT_EQ(t.table.rows[0][ppl], "16.44");
  EXPECT_EQ(t.table.rows[0][acc], "0.612");
  EXPECT_EQ(t.table.rows[0][kl], "—");  // the teacher's eval.json has no KL: nothing is made up
  EXPECT_EQ(t.table.rows[1][0], "ptq_nvfp4");
  EXPECT_EQ(t.table.rows[1][1], "ptq (NVFP4 export)");
  EXPECT_EQ(t.table.rows[1][acc], "0.412");
  EXPECT_EQ(t.table.rows[2][acc], "0.538");
  EXPECT_EQ(t.table.rows[3][acc], "0.561");
  EXPECT_EQ(t.table.rows[3][kl], "0.0551");
  EXPECT_TRUE(t.problems.empty()) << ::testing::PrintToString(t.problems);
  // Every evaluation setting is shared, so none is a column; the line names them with their values.
  EXPECT_EQ(t.table.columns, (std::vector<std::string>{"model", "method", "perplexity", "KL(teacher ‖ model)",
                                                       "top-1 agreement", "task accuracy"}));
  const std::string shared = t.shared_text();
  EXPECT_NE(shared.find("Common settings: device = cuda, dtype = bfloat16, data = data/heldout.jsonl, ppl mode = "
                        "packed, seq len = 512, scored tokens = 65536"),
            std::string::npos)
      << shared;
  EXPECT_NE(shared.find("tasks = tasks/arith/test.jsonl, task items = 1000, samples per item = 1"), std::string::npos);
  EXPECT_NE(shared.find("Only in ptq_nvfp4, qwen3-16m QAD and qwen3-16m CKA-QAD: KL against = /models/qwen3-16m-teacher."),
            std::string::npos)
      << shared;

  const std::string html = render_html_report(entries, {"PTQ vs QAD vs CKA-QAD"}, &teacher);
  if (const char* keep = std::getenv("QAD_REPORT_HTML")) qad::write_file_atomic(keep, html);
  // The teacher row with the teacher's perplexity and accuracy, and the accuracy column's header.
  const std::string teacher_row = table_row(html, "teacher: qwen3-16m-teacher");
  EXPECT_NE(teacher_row.find("<td class=\"num\">16.44</td>"), std::string::npos) << teacher_row;
  EXPECT_NE(teacher_row.find("<td class=\"num\">0.612</td>"), std::string::npos) << teacher_row;
  EXPECT_NE(html.find("<th class=\"num\">task accuracy</th>"), std::string::npos);
  EXPECT_NE(table_row(html, "qwen3-16m CKA-QAD").find("<td class=\"num\">0.561</td>"), std::string::npos);

  // The PTQ baseline on the accuracy chart, at its value: the dashed lines and the QAD dot share one linear map.
  const XmlDoc chart = svg_with_id(html, "eval-task_accuracy");
  const XmlElement* base = line_with(chart, "reference baseline", "ptq_nvfp4 (baseline)");
  const XmlElement* ref = line_with(chart, "reference");
  ASSERT_NE(base, nullptr);
  ASSERT_NE(ref, nullptr);
  EXPECT_EQ(title_after(chart, base), "ptq_nvfp4 0.412");
  EXPECT_EQ(attr(base, "y1"), attr(base, "y2"));  // horizontal
  EXPECT_EQ(base->attrs.at("stroke-dasharray"), "8 5");
  EXPECT_EQ(base->attrs.at("stroke"), std::string(palette_colour(0)));  // the entry's colour
  const XmlElement* qad_dot = nullptr;  // QAD is entry 1: square markers
  for (const auto* r : chart.all("rect")) {
    if (r->attrs.count("fill") && r->attrs.at("fill") == palette_colour(1)) {
      qad_dot = r;
      break;
    }
  }
  ASSERT_NE(qad_dot, nullptr);
  const double y_qad = attr(qad_dot, "y") + attr(qad_dot, "height") / 2;
  const double y_teacher = attr(ref, "y1"), y_ptq = attr(base, "y1");
  EXPECT_NEAR((y_ptq - y_teacher) / (y_qad - y_teacher), (0.412 - 0.612) / (0.538 - 0.612), 1e-3);
  EXPECT_NE(html.find("coloured dashed: PTQ"), std::string::npos);
  // Evaluation figures never reach the validation charts: no baseline there (an export has no validation).
  EXPECT_EQ(line_with(svg_with_id(html, "valid-kl"), "reference baseline"), nullptr);
  for (const auto& svg_id : {"eval-task_accuracy", "eval-perplexity", "eval-kl", "eval-agreement"}) {
    const XmlDoc d = svg_with_id(html, svg_id);
    for (const auto* e : d.all("text")) {
      if (e->attrs.count("class") && e->attrs.at("class") == "x-label") {
        EXPECT_EQ(e->text, "model (qad eval)");
      }
    }
  }
}

TEST(CompareReport, PtqRunIsADashedBaselineOnTheValidationCharts) {
  const std::vector<RunData> runs = {read_run(kRuns / "ptq"), read_run(kRuns / "qad"), read_run(kRuns / "cka_qad")};
  ASSERT_TRUE(runs[0].is_baseline());
  std::vector<std::string> warnings;
  const auto figures = validation_charts(runs, warnings);
  EXPECT_TRUE(warnings.empty()) << ::testing::PrintToString(warnings);
  const std::string html = render_html_report(runs, {});
  const XmlDoc kl = svg_with_id(html, "valid-kl");
  const XmlElement* base = line_with(kl, "reference baseline", "qwen3-16m PTQ (baseline)");
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(title_after(kl, base), "qwen3-16m PTQ 0.452");
  // PTQ is not also a series (no lone marker hiding under the others).
  for (const auto* p : kl.all("polyline")) EXPECT_NE(p->attrs.at("data-series"), "qwen3-16m PTQ");
  for (const auto* g : kl.all("title")) EXPECT_EQ(g->text.rfind("qwen3-16m PTQ:", 0), std::string::npos);
  // At its value: QAD's first and last validation points (KL 0.4935 at step 0, 0.055 at step 800) fix the map.
  std::string qad_points;
  for (const auto* p : kl.all("polyline")) {
    if (p->attrs.at("data-series") == "qwen3-16m QAD") qad_points = p->attrs.at("points");
  }
  ASSERT_FALSE(qad_points.empty());
  const double y_first = std::stod(qad_points.substr(qad_points.find(',') + 1));
  const double y_last = std::stod(qad_points.substr(qad_points.rfind(',') + 1));
  EXPECT_NEAR(attr(base, "y1"), y_first + (0.452 - 0.4935) / (0.055 - 0.4935) * (y_last - y_first), 0.02);
  EXPECT_NE(html.find("Dashed: qwen3-16m PTQ (step 0) as a baseline."), std::string::npos);
  // The mean-CKA chart holds both the teacher's CKA = 1 and PTQ's line.
  const XmlDoc cka = svg_with_id(html, "valid-mean_cka");
  EXPECT_NE(line_with(cka, "reference"), nullptr);
  EXPECT_NE(line_with(cka, "reference baseline", "qwen3-16m PTQ (baseline)"), nullptr);
  // No training: no heatmap of one column for PTQ, and no line on the training charts.
  EXPECT_EQ(html.find("id=\"heatmap-0\""), std::string::npos);
  EXPECT_NE(html.find("id=\"heatmap-1\""), std::string::npos);
  EXPECT_EQ(line_with(svg_with_id(html, "train-kl"), "reference baseline"), nullptr);
}

TEST(CompareReport, BaselineFromAnotherValidationSplitIsLeftOutWithAWarning) {
  std::vector<RunData> runs = {read_run(kRuns / "ptq"), read_run(kRuns / "qad")};
  runs[0].config["seq_len"] = 128;
  std::vector<std::string> warnings;
  const auto figures = validation_charts(runs, warnings);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("ptq/run.json: not drawn as a baseline on the validation charts: seq_len is 128 here but "
                             "256 in qwen3-16m QAD"),
            std::string::npos)
      << warnings[0];
  for (const auto& f : figures) EXPECT_EQ(f.svg.find("baseline"), std::string::npos);
  const std::string html = render_html_report(runs, {});
  EXPECT_NE(html.find("not drawn as a baseline"), std::string::npos);  // in the page's warnings too
}

TEST(CompareReport, EvaluationSettingsThatDifferAreNamedAndNotPlotted) {
  auto entries = acceptance_entries();
  for (auto& s : entries[2].eval->settings) {
    if (s.name == "seq len") s.value = "256";
  }
  const EvalResult teacher = teacher_eval();
  const ComparisonTable t = evaluation_table(entries, &teacher);
  ASSERT_EQ(t.problems.size(), 1u);
  EXPECT_EQ(t.problems[0], "\"seq len\" differs between rows: 512 (teacher: qwen3-16m-teacher, ptq_nvfp4, qwen3-16m "
                           "QAD); 256 (qwen3-16m CKA-QAD). Their figures are not comparable; evaluate every model with "
                           "the same qad eval settings.");
  EXPECT_EQ(t.table.rows[3][column_of(t.table, "seq len")], "256");  // the differing setting is a column
  const std::string html = render_html_report(entries, {}, &teacher);
  EXPECT_NE(html.find("<p class=\"problem\">&quot;seq len&quot; differs"), std::string::npos);
  EXPECT_EQ(html.find("id=\"eval-task_accuracy\""), std::string::npos);
  // Device and dtype do not make figures incomparable: a column, but no problem.
  entries = acceptance_entries();
  for (auto& s : entries[1].eval->settings) {
    if (s.name == "dtype") s.value = "float32";
  }
  const ComparisonTable u = evaluation_table(entries, &teacher);
  EXPECT_TRUE(u.problems.empty());
  EXPECT_LT(column_of(u.table, "dtype"), u.table.columns.size());
}

TEST(CompareReport, ExportDirectories) {
  const auto d = fresh_dir("exports");
  // An export without eval.json has nothing to show: an error that says how to make one.
  fs::create_directories(d / "bare");
  qad::write_file_atomic(d / "bare/hf_quant_config.json", R"({"producer":{"name":"qad"}})");
  try {
    read_run(d / "bare");
    FAIL() << "no exception";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is an NVFP4 export without eval.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--out " + (d / "bare/eval.json").string()), std::string::npos) << e.what();
  }
  const std::string eval = qad::read_file(kFixtures / "teacher_eval.json");
  // An export inside RUN_DIR/export/ is that run's model.
  fs::create_directories(d / "run/export/nvfp4");
  qad::write_file_atomic(d / "run/run.json", R"({"name":"my QAD","method":"qad","config":{}})");
  qad::write_file_atomic(d / "run/export/nvfp4/hf_quant_config.json", R"({"producer":{"name":"qad"}})");
  qad::write_file_atomic(d / "run/export/nvfp4/eval.json", eval);
  const RunData inside = read_run(d / "run/export/nvfp4");
  EXPECT_EQ(inside.name, "my QAD (export/nvfp4)");
  EXPECT_EQ(inside.method, "qad");
  // Another producer's export is not assumed to be PTQ.
  fs::create_directories(d / "modelopt");
  qad::write_file_atomic(d / "modelopt/hf_quant_config.json", R"({"producer":{"name":"modelopt"}})");
  qad::write_file_atomic(d / "modelopt/eval.json", eval);
  EXPECT_EQ(read_run(d / "modelopt").method, "nvfp4 export");
  // A damaged eval.json in an export is an error naming the file; beside a run it is a warning.
  qad::write_file_atomic(d / "modelopt/eval.json", "{\"perplexity\": 3}");
  EXPECT_THROW(read_run(d / "modelopt"), qad::Error);
  qad::write_file_atomic(d / "run/eval.json", "[1, 2");
  const RunData run = read_run(d / "run");
  EXPECT_FALSE(run.eval.has_value());
  ASSERT_FALSE(run.warnings.empty());
  EXPECT_NE(run.warnings.back().find((d / "run/eval.json").string() + ": not valid JSON"), std::string::npos)
      << run.warnings.back();
  ::qad::remove_tree(d);
}

TEST(CompareReport, EvalJsonOfAnotherDirectoryIsAWarning) {
  const auto d = fresh_dir("other");
  qad::write_file_atomic(d / "run.json", R"({"name":"r","method":"qad","config":{}})");
  std::string eval = qad::read_file(kRuns / "qad/eval.json");
  qad::write_file_atomic(d / "eval.json", eval);  // names tests/report/fixtures/runs/qad, which exists
  const fs::path cwd = fs::current_path();
  fs::current_path(QAD_SOURCE_DIR);
  const RunData r = read_run(d);
  fs::current_path(cwd);
  ASSERT_FALSE(r.warnings.empty());
  EXPECT_NE(r.warnings.back().find("eval.json: it evaluates tests/report/fixtures/runs/qad, not " + d.string()),
            std::string::npos)
      << r.warnings.back();
  ::qad::remove_tree(d);
}

TEST(CompareReport, SummaryIsCompactAndExportsAsCsvAndMarkdown) {
  const std::vector<RunData> runs = {read_run(kRuns / "ptq"), read_run(kRuns / "qad"), read_run(kRuns / "cka_qad")};
  const ComparisonTable s = summary_table(runs);
  // Only cka_lambda differs between the runs; nobody logged task accuracy, a best checkpoint or a train time.
  EXPECT_EQ(s.table.columns,
            (std::vector<std::string>{"run", "method", "cka_lambda", "steps", "tokens", "train loss", "valid KL",
                                      "valid ppl", "mean CKA", "worst layer CKA", "agreement", "final arith.accuracy"}));
  EXPECT_EQ(s.shared_text(),
            "Common settings: teacher = qwen3-16m-teacher, seq_len = 256, batch = 8, device = cuda. Only in qwen3-16m "
            "PTQ: calibration = max, calib_tokens = 65536. Only in qwen3-16m QAD and qwen3-16m CKA-QAD: lr = 1e-05, "
            "lr_schedule = cosine, warmup = 0.05, tokens = 1638400, cka_layers = all, seed = 0.");
  const std::string csv = to_csv(s.table);
  EXPECT_EQ(csv,
            "run,method,cka_lambda,steps,tokens,train loss,valid KL,valid ppl,mean CKA,worst layer CKA,agreement,"
            "final arith.accuracy\n"
            "qwen3-16m PTQ,ptq,—,0,—,—,0.452,25.1,0.95404,0.93359,0.71,0.412\n"
            "qwen3-16m QAD,qad,0,800,1.64M,0.05239,0.055,19.15,0.93705,0.89519,0.8738,0.538\n"
            "qwen3-16m CKA-QAD,cka-qad,0.1,800,1.64M," +
                format_number(*runs[2].train.back().get("loss"), 4) + ",0.05002,19.06,0.99229," +
                format_number(std::min_element(runs[2].valid.back().cka.begin(), runs[2].valid.back().cka.end(),
                                               [](const auto& a, const auto& b) { return a.value < b.value; })
                                  ->value,
                              5) +
                "," + format_number(*runs[2].valid.back().get("agreement"), 4) + ",0.561\n");
  EXPECT_EQ(parse_csv(csv).rows.size(), 3u);

  const EvalResult teacher = teacher_eval();
  const ComparisonTable e = evaluation_table(runs, &teacher);
  const std::string md = report_markdown("PTQ | QAD", s, e);
  EXPECT_EQ(md.substr(0, md.find("\n## Evaluation")),
            "# PTQ | QAD\n"
            "\n"
            "## Training summary (last validation)\n"
            "\n" +
                to_markdown(s.table) + "\n" + s.shared_text() + "\n");
  EXPECT_EQ(md.substr(md.find("\n## Evaluation")),
            "\n## Evaluation (qad eval)\n"
            "\n"
            "| model | method | perplexity | KL(teacher ‖ model) | top-1 agreement | task accuracy |\n"
            "| --- | --- | ---: | ---: | ---: | ---: |\n"
            "| teacher: qwen3-16m-teacher | teacher | 16.44 | — | — | 0.612 |\n"
            "| qwen3-16m QAD | qad | 17.9 | 0.0612 | 0.872 | 0.538 |\n"
            "| qwen3-16m CKA-QAD | cka-qad | 17.6 | 0.0551 | 0.881 | 0.561 |\n"
            "\n" +
                e.shared_text() + "\n");
  EXPECT_NE(md.find("| qwen3-16m PTQ | ptq | — | 0 | — | — | 0.452 | 25.1 |"), std::string::npos) << md;
}

TEST(CompareReport, SmoothedCurvesKeepTheRawValuesFaintAndSaySo) {
  const std::vector<RunData> runs = {read_run(kRuns / "qad"), read_run(kRuns / "cka_qad")};
  const std::string raw = render_html_report(runs, {});
  EXPECT_NE(raw.find("Raw per-step values (no smoothing"), std::string::npos);
  EXPECT_EQ(raw.find("series raw"), std::string::npos);
  ReportOptions o;
  o.smooth = 0.9;
  const std::string html = render_html_report(runs, o);
  EXPECT_NE(html.find("exponential moving average with weight 0.9"), std::string::npos);
  const XmlDoc kl = svg_with_id(html, "train-kl");
  std::vector<const XmlElement*> faint, solid;
  for (const auto* p : kl.all("polyline")) (p->attrs.at("class") == "series raw" ? faint : solid).push_back(p);
  ASSERT_EQ(faint.size(), 2u);
  ASSERT_EQ(solid.size(), 2u);
  EXPECT_EQ(faint[0]->attrs.at("stroke-opacity"), "0.28");
  EXPECT_NE(faint[0]->attrs.at("points"), solid[0]->attrs.at("points"));
  // The smoothed line starts at the first raw value (debiased) and lags behind the falling raw curve after.
  const auto first = [](const XmlElement* p) { return p->attrs.at("points").substr(0, p->attrs.at("points").find(' ')); };
  EXPECT_EQ(first(faint[0]), first(solid[0]));
  // Validation curves are sparse and are never smoothed.
  const XmlDoc valid = svg_with_id(html, "valid-kl");
  for (const auto* p : valid.all("polyline")) EXPECT_EQ(p->attrs.at("class"), "series");
}

TEST(CompareReport, HeatmapsHaveTheirOwnColourScaleUnlessShared) {
  const std::vector<RunData> runs = {read_run(kRuns / "qad"), read_run(kRuns / "cka_qad")};
  auto range = [](const RunData& r) {
    double lo = 1, hi = 0;
    for (const auto& v : r.valid) {
      for (const auto& l : v.cka) lo = std::min(lo, l.value), hi = std::max(hi, l.value);
    }
    return std::pair{lo, hi};
  };
  const auto [qad_lo, qad_hi] = range(runs[0]);
  const auto [cka_lo, cka_hi] = range(runs[1]);
  ASSERT_NE(qad_lo, cka_lo);
  // Own scales: each heatmap's extremes are the ends of viridis, and its caption states its range.
  const auto own = heatmaps(runs, HeatmapScale::kOwn);
  ASSERT_EQ(own.size(), 2u);
  for (const auto& f : own) {
    EXPECT_NE(f.svg.find("fill=\"#440154\""), std::string::npos);
    EXPECT_NE(f.svg.find("fill=\"#fde725\""), std::string::npos);
    EXPECT_NE(f.svg.find(">CKA (own scale)</text>"), std::string::npos);
  }
  EXPECT_NE(own[0].caption.find("this run's own range, CKA " + format_number(qad_lo, 5) + " (dark) to " +
                                format_number(qad_hi, 5)),
            std::string::npos)
      << own[0].caption;
  EXPECT_NE(own[1].caption.find("CKA " + format_number(cka_lo, 5) + " (dark) to " + format_number(cka_hi, 5)),
            std::string::npos);
  // Shared: one range, so only the run holding the overall minimum reaches the dark end.
  const auto shared = heatmaps(runs, HeatmapScale::kShared);
  const bool qad_has_min = qad_lo < cka_lo;
  EXPECT_EQ(shared[0].svg.find("fill=\"#440154\"") != std::string::npos, qad_has_min);
  EXPECT_EQ(shared[1].svg.find("fill=\"#440154\"") != std::string::npos, !qad_has_min);
  EXPECT_EQ(shared[0].caption, shared[1].caption);
  EXPECT_NE(shared[0].caption.find("shared by all heatmaps: CKA " + format_number(std::min(qad_lo, cka_lo), 5)),
            std::string::npos);
}

TEST(CompareReport, AxesSayWhatIsPlotted) {
  auto runs = std::vector<RunData>{read_run(kRuns / "qad"), read_run(kRuns / "cka_qad")};
  const std::string html = render_html_report(runs, {});
  auto label = [&](const std::string& id, const std::string& cls) {
    const XmlDoc doc = svg_with_id(html, id);
    for (const auto* e : doc.all("text")) {
      if (e->attrs.count("class") && e->attrs.at("class") == cls) return e->text;
    }
    return std::string("(none)");
  };
  // cka_loss is mean over layers of (1 - CKA) before lambda (loss/cka_loss.h, train/step.cc), not a sum.
  EXPECT_EQ(label("train-cka_loss", "y-label"), "mean over layers of (1 − CKA)");
  EXPECT_EQ(label("train-cka_loss", "title"), "Training: CKA term before λ");
  EXPECT_EQ(html.find("sum of (1"), std::string::npos);
  for (const char* id : {"train-loss", "train-kl", "train-cka_loss", "valid-kl", "valid-mean_cka", "valid-ppl",
                         "valid-agreement", "system-lr", "system-grad_norm", "system-tokens_per_s",
                         "system-peak_mem_gb-gpu"}) {
    EXPECT_EQ(label(id, "x-label"), "training step") << id;
    EXPECT_NE(label(id, "y-label"), "(none)") << id;
  }
  // Both fixture runs trained on CUDA: the allocator's peak.
  EXPECT_EQ(label("system-peak_mem_gb-gpu", "title"), "Peak GPU memory (CUDA caching allocator)");
}

TEST(CompareReport, PeakMemoryIsLabelledByDevice) {
  auto runs = std::vector<RunData>{read_run(kRuns / "qad"), read_run(kRuns / "cka_qad")};
  auto memory_charts = [](const std::vector<RunData>& r) {
    std::vector<Figure> out;
    for (const auto& f : system_charts(r, 0)) {
      if (f.svg.find("id=\"system-peak_mem_gb") != std::string::npos) out.push_back(f);
    }
    return out;
  };
  for (auto& r : runs) r.device = "cpu";
  auto charts = memory_charts(runs);
  ASSERT_EQ(charts.size(), 1u);
  EXPECT_NE(charts[0].svg.find(">Peak process memory (CPU runs: resident set size)</text>"), std::string::npos);
  EXPECT_EQ(charts[0].svg.find("GPU"), std::string::npos);
  EXPECT_NE(charts[0].caption.find("peak resident set size"), std::string::npos);
  // Mixed devices: one chart per meaning, each run in its own colour in whichever it belongs to.
  runs[1].device = "auto";
  charts = memory_charts(runs);
  ASSERT_EQ(charts.size(), 2u);
  EXPECT_NE(charts[0].svg.find("id=\"system-peak_mem_gb-cpu\""), std::string::npos);
  EXPECT_NE(charts[0].svg.find(">qwen3-16m QAD</text>"), std::string::npos);
  EXPECT_EQ(charts[0].svg.find("CKA-QAD"), std::string::npos);
  EXPECT_NE(charts[1].svg.find(">Peak memory (device auto)</text>"), std::string::npos);
  EXPECT_NE(charts[1].svg.find("stroke=\"" + std::string(palette_colour(1)) + "\""), std::string::npos);
  EXPECT_NE(charts[1].caption.find("run.json does not record which"), std::string::npos);
  // The trainer's run.json nests the device under "run".
  const auto d = fresh_dir("device");
  qad::write_file_atomic(d / "run.json", R"({"name":"n","method":"qad","config":{"run":{"device":"cpu"}}})");
  EXPECT_EQ(read_run(d).device, "cpu");
  ::qad::remove_tree(d);
}

}  // namespace
