// The HTML report: page layout, sections and notes around the tables and charts (see html_report.h and
// docs/report.md).
#include "report/html_report.h"

#include <fmt/format.h>

#include "qad/version.h"
#include "report/svg_common.h"
#include "report/ticks.h"
#include "util/atomic_file.h"

namespace qad::report {
namespace {

constexpr const char* kCss = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;color:#1a1a1a;
  background:#fafafa;margin:0;padding:24px 32px;line-height:1.45}
main{max-width:1240px;margin:0 auto}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 10px;padding-bottom:4px;border-bottom:1px solid #ddd}
p.meta,p.note,p.settings{color:#555;margin:4px 0 12px}
p.note{font-size:14px}
p.settings{font-size:13.5px;max-width:1200px}
p.problem{color:#8a1c00;background:#fff3ee;border:1px solid #f0c2b0;border-radius:4px;padding:6px 10px;margin:6px 0}
table{border-collapse:collapse;background:#fff;font-size:14px;margin:8px 0 6px;display:block;overflow-x:auto}
th,td{padding:5px 8px;border-bottom:1px solid #e4e4e4;text-align:left;white-space:nowrap}
th{background:#f0f0f0;font-weight:600;white-space:normal;vertical-align:bottom;max-width:9em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f8f8f8}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:8px}
figure.wide{margin:0 0 16px;width:fit-content;max-width:100%}
figure svg{display:block;max-width:100%;height:auto}
figcaption{color:#555;font-size:12.5px;margin:4px 4px 0;max-width:940px}
details{margin:6px 0}
summary{cursor:pointer;font-weight:600}
pre{background:#fff;border:1px solid #e4e4e4;padding:10px;overflow-x:auto;font-size:13px}
ul.warnings li{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px;color:#8a4b00}
footer{margin-top:32px;color:#888;font-size:13px}
)";

std::string render_figure(const Figure& f) {
  std::string html = f.wide ? "<figure class=\"wide\">\n" : "<figure>\n";
  html += f.svg;
  if (!f.caption.empty()) html += "<figcaption>" + xml_escape(f.caption) + "</figcaption>\n";
  return html + "</figure>\n";
}

}  // namespace

std::string render_figures(const std::vector<Figure>& figures, const char* none) {
  if (figures.empty()) return fmt::format("<p class=\"note\">{}</p>\n", none);
  std::string html, grid;
  for (const auto& f : figures) {
    if (f.wide) {
      html += render_figure(f);
    } else {
      grid += render_figure(f);
    }
  }
  if (!grid.empty()) html += "<div class=\"charts\">\n" + grid + "</div>\n";
  return html;
}

namespace {

std::string render_table(const ComparisonTable& t) {
  std::string html;
  for (const auto& p : t.problems) html += "<p class=\"problem\">" + xml_escape(p) + "</p>\n";
  html += to_html(t.table);
  if (const std::string shared = t.shared_text(); !shared.empty()) {
    // A training run's dozens of shared settings would push the figures off the screen: folded (the differing
    // ones are columns). A short list (the evaluation settings) stays in view.
    if (t.shared.size() > 12) {
      html += "<details class=\"settings\"><summary>Settings the rows share (" + std::to_string(t.shared.size()) +
              ")</summary><p class=\"settings\">" + xml_escape(shared) + "</p></details>\n";
    } else {
      html += "<p class=\"settings\">" + xml_escape(shared) + "</p>\n";
    }
  }
  return html;
}

}  // namespace

const char* report_css() { return kCss; }

std::string render_html_report(const std::vector<RunData>& runs, const ReportOptions& options,
                               const EvalResult* teacher) {
  std::vector<std::string> report_warnings;
  std::string html;
  html += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  html += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  html += fmt::format("<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n<main>\n", xml_escape(options.title), kCss);
  html += fmt::format("<h1>{}</h1>\n", xml_escape(options.title));
  std::string names;
  for (const auto& run : runs) names += (names.empty() ? "" : ", ") + xml_escape(run.name);
  html += fmt::format("<p class=\"meta\">{} entr{}: {}{}</p>\n", runs.size(), runs.size() == 1 ? "y" : "ies", names,
                      teacher ? "; teacher: " + xml_escape(teacher->file.string()) : "");

  const ComparisonTable summary = summary_table(runs);
  if (!summary.table.rows.empty()) {
    html += "<h2>Training summary</h2>\n";
    html += render_table(summary);
    html += "<p class=\"note\">Last validation values (final_metrics.json where metrics.jsonl has none), on each "
            "run's validation split. KL is KL(teacher ‖ student) in nats per token; CKA is linear CKA of each "
            "layer's hidden states against the teacher's (1 = same geometry). Columns between \"method\" and "
            "\"steps\" are the run.json settings that differ between runs.</p>\n";
  }

  const ComparisonTable evaluation = evaluation_table(runs, teacher);
  html += "<h2>Evaluation (qad eval)</h2>\n";
  if (evaluation.table.rows.empty()) {
    html += "<p class=\"note\">No entry has an eval.json. To compare task accuracy and held-out perplexity, run "
            "<code>qad eval --model RUN_DIR --data ... --tasks ... --out RUN_DIR/eval.json</code> for each run and "
            "export and give the teacher's with <code>--teacher</code>.</p>\n";
  } else {
    html += render_table(evaluation);
    html += "<p class=\"note\">Figures from each entry's eval.json (qad eval), measured on the evaluation data and "
            "tasks named in the settings, not on the training validation split: they are never drawn on the "
            "validation charts. Task accuracy counts each item's first sample.</p>\n";
    if (evaluation.problems.empty()) {
      html += render_figures(evaluation_charts(runs, teacher), "No evaluation figures to plot.");
    } else {
      html += "<p class=\"note\">No evaluation charts: the rows were evaluated with different settings (above).</p>\n";
    }
  }

  html += "<h2>Training curves</h2>\n";
  html += render_figures(training_charts(runs, options.smooth), "No run logged training metrics.");
  html += "<h2>Validation</h2>\n";
  html += render_figures(validation_charts(runs, report_warnings), "No run logged validation metrics.");
  html += "<h2>Per-layer CKA</h2>\n";
  html += render_figures(layer_charts(runs), "No run logged per-layer CKA.");
  html += "<h2>Per-layer CKA over training</h2>\n";
  html += render_figures(heatmaps(runs, options.heatmap_scale), "No trained run logged per-layer CKA.");
  html += "<h2>Optimizer and system</h2>\n";
  html += render_figures(system_charts(runs, options.smooth), "No run logged these metrics.");

  html += "<h2>Configurations</h2>\n";
  for (const auto& run : runs) {
    if (run.kind != EntryKind::kRun) continue;
    html += fmt::format("<details><summary>{} ({}) — {}</summary>\n<pre>{}</pre>\n</details>\n", xml_escape(run.name),
                        xml_escape(run.method), xml_escape(run.dir.string()),
                        xml_escape(run.config.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace)));
  }
  std::vector<std::string> warnings;
  for (const auto& run : runs) warnings.insert(warnings.end(), run.warnings.begin(), run.warnings.end());
  warnings.insert(warnings.end(), report_warnings.begin(), report_warnings.end());
  if (!warnings.empty()) {
    html += fmt::format("<h2>Warnings ({})</h2>\n<ul class=\"warnings\">\n", warnings.size());
    for (const auto& w : warnings) html += "<li>" + xml_escape(w) + "</li>\n";
    html += "</ul>\n";
  }
  html += fmt::format("<footer>Generated by qad {} (qad report). Self-contained: no scripts, no external "
                      "resources.</footer>\n</main>\n</body>\n</html>\n",
                      QAD_VERSION);
  return html;
}

void write_html_report(const std::filesystem::path& out, const std::vector<RunData>& runs,
                       const ReportOptions& options, const EvalResult* teacher) {
  write_file_atomic(out, render_html_report(runs, options, teacher));
}

}  // namespace qad::report
