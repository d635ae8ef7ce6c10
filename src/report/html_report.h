// `qad report`: one self-contained HTML file comparing training runs, PTQ and NVFP4 exports against the
// teacher (inline CSS and SVG; no scripts, no external fetches): the training summary, the evaluation table
// (eval.json), loss curves, validation curves with PTQ baselines, per-layer CKA, heatmaps, system curves.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "report/eval_reader.h"
#include "report/report_charts.h"
#include "report/report_tables.h"
#include "report/run_reader.h"

namespace qad::report {

struct ReportOptions {
  std::string title = "qad training report";
  double smooth = 0;  // EMA weight for per-step training curves (0 = raw values); see smoothing.h
  HeatmapScale heatmap_scale = HeatmapScale::kOwn;
};

// `teacher`: the teacher's eval.json (qad eval --model TEACHER --out FILE), the evaluation table's first row.
std::string render_html_report(const std::vector<RunData>& runs, const ReportOptions& options,
                               const EvalResult* teacher = nullptr);

// The page style every report page shares (the experiment page too).
const char* report_css();

// Figures as HTML: grid figures in one chart grid, wide ones alone; `none` as a note when there are none.
std::string render_figures(const std::vector<Figure>& figures, const char* none);

// Renders and writes atomically (a reader never sees half a report).
void write_html_report(const std::filesystem::path& out, const std::vector<RunData>& runs,
                       const ReportOptions& options, const EvalResult* teacher = nullptr);

}  // namespace qad::report
