// The report's comparison tables. The training summary: one row per run, the settings that differ between
// runs, then the last validation figures. The evaluation table: the teacher and every entry with an eval.json,
// the settings that produced their figures (data, windows, tasks, samples) and the figures. Settings that all
// rows share are pulled out of both into one line, so that the tables show what differs.
#pragma once
#include <string>
#include <vector>

#include "report/eval_reader.h"
#include "report/run_reader.h"
#include "report/settings_split.h"
#include "report/table.h"

namespace qad::report {

struct ComparisonTable {
  Table table;
  std::vector<SharedSetting> shared;   // settings left out of the columns because the rows agree
  std::vector<std::string> row_names;  // the rows, for describe_shared
  std::vector<std::string> problems;   // rows that must not be compared, and why (shown above the table)

  std::string shared_text() const { return describe_shared(shared, row_names); }
};

// Training runs only (exports and model directories have no training): run, method, differing config
// settings, steps, tokens, train time, last train loss, last validation KL / ppl / mean CKA / worst layer CKA
// / agreement / task accuracy (final_metrics.json when metrics.jsonl lacks them), best checkpoint, and the
// final_metrics.json keys the report does not already show. Columns empty in every row are dropped.
ComparisonTable summary_table(const std::vector<RunData>& runs);

// The teacher (when given) and then every entry with an eval.json, in order: model, method, differing
// evaluation settings, perplexity, KL(teacher || model), top-1 agreement, task accuracy (avg@k with more
// than one sample). Empty (no rows) when nothing was evaluated.
ComparisonTable evaluation_table(const std::vector<RunData>& runs, const EvalResult* teacher);

// The tables as a Markdown document: title, the summary with its settings line, the evaluation table with
// its settings line and problems (when it has rows).
std::string report_markdown(const std::string& title, const ComparisonTable& summary,
                            const ComparisonTable& evaluation);

}  // namespace qad::report
