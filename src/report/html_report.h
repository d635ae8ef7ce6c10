// `qad report`: one self-contained HTML file comparing training runs (inline CSS and SVG; no scripts,
// no external fetches): summary table, loss curves, validation KL and CKA, per-layer CKA, heatmaps.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "report/run_reader.h"
#include "report/table.h"

namespace qad::report {

struct ReportOptions {
  std::string title = "qad training report";
};

// One row per run: method, steps, tokens, last train loss, last validation KL / ppl / mean CKA / worst
// layer CKA / agreement, then every final metric (union over runs, first-seen order).
Table summary_table(const std::vector<RunData>& runs);

std::string render_html_report(const std::vector<RunData>& runs, const ReportOptions& options);

// Renders and writes atomically (a reader never sees half a report).
void write_html_report(const std::filesystem::path& out, const std::vector<RunData>& runs,
                       const ReportOptions& options);

}  // namespace qad::report
