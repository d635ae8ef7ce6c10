// The report's charts, built from the runs: per-step training curves (optionally EMA-smoothed with the raw
// values faint behind), validation curves with PTQ runs as horizontal baselines, per-layer CKA, heatmaps,
// optimizer and system curves, and dot plots of qad eval figures with the teacher and PTQ as reference lines.
// A figure carries its caption, which says how it was made (smoothing, colour scale, baselines).
#pragma once
#include <string>
#include <vector>

#include "report/eval_reader.h"
#include "report/run_reader.h"

namespace qad::report {

enum class HeatmapScale {
  kOwn,     // each heatmap spans its own run's range: layer differences inside a run are visible
  kShared,  // one range for all: the same colour is the same CKA in every heatmap
};

struct Figure {
  std::string svg;
  std::string caption;  // plain text; empty = none
  bool wide = false;    // a full-width figure (per-layer chart, heatmaps), else one cell of the chart grid
};

// Loss, KL, CE, CKA term: one chart per metric some run logged. smooth = EMA weight (0 = raw values).
std::vector<Figure> training_charts(const std::vector<RunData>& runs, double smooth);

// KL, mean CKA, perplexity, agreement, task accuracy over validation steps. A baseline run (is_baseline: a
// PTQ run) is a dashed line at its last validation value, drawn only when its validation split is the other
// runs' (same data, seq len, batch, validation batches, teacher); otherwise `warnings` says why it is left out.
std::vector<Figure> validation_charts(const std::vector<RunData>& runs, std::vector<std::string>& warnings);

// Per-layer CKA at each run's last validation (empty when no run logged per-layer CKA).
std::vector<Figure> layer_charts(const std::vector<RunData>& runs);

// Per-layer CKA over training, one heatmap per trained run (baselines have one column and are in the
// per-layer chart).
std::vector<Figure> heatmaps(const std::vector<RunData>& runs, HeatmapScale scale);

// Learning rate, gradient norm, throughput, peak memory (labelled GPU allocator or process RSS by each
// run's device). smooth as in training_charts.
std::vector<Figure> system_charts(const std::vector<RunData>& runs, double smooth);

// qad eval figures (perplexity, KL, agreement, task accuracy), one dot per evaluated model, the teacher and
// PTQ entries as dashed reference lines. The caller draws them only when the evaluation settings agree.
std::vector<Figure> evaluation_charts(const std::vector<RunData>& runs, const EvalResult* teacher);

// "ptq" runs and exports: the reference a quantization-aware method has to beat.
bool is_ptq(const RunData& run);

}  // namespace qad::report
