// The report's charts (see report_charts.h).
#include "report/report_charts.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "report/cka_output.h"
#include "report/run_metrics.h"
#include "report/settings_split.h"
#include "report/smoothing.h"
#include "report/svg_common.h"
#include "report/svg_heatmap.h"
#include "report/svg_plot.h"
#include "report/ticks.h"

namespace qad::report {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr size_t kMaxPointsPerSeries = 1500;  // longer series are bucket-averaged to keep the file small
constexpr size_t kMaxHeatmapColumns = 60;

struct MetricSpec {
  const char* key;
  const char* title;
  const char* y_label;
};

constexpr MetricSpec kTrainMetrics[] = {
    {"loss", "Training: total loss (what was minimised)", "loss"},
    {"kl", "Training: KL(teacher ‖ student)", "KL (nats/token)"},
    {"ce", "Training: cross-entropy on the labels", "CE (nats/token)"},
    // The trainer logs mean over the CKA layers of (1 - CKA), before lambda and the dynamic-balance factor.
    {"cka_loss", "Training: CKA term before λ", "mean over layers of (1 − CKA)"},
};
constexpr MetricSpec kValidMetrics[] = {
    {"kl", "Validation: KL(teacher ‖ student)", "KL (nats/token)"},
    {"mean_cka", "Validation: mean layer CKA", "mean CKA over layers"},
    {"ppl", "Validation: perplexity", "perplexity"},
    {"agreement", "Validation: top-1 agreement with the teacher", "agreement (fraction of tokens)"},
    {"task_accuracy", "Validation: task accuracy (run.valid_tasks)", "accuracy (fraction of items)"},
};

// Settings that decide which tokens a validation sees; the flat names are older hand-written run.json files.
constexpr const char* kValidationSplitKeys[] = {
    "data.path", "data.valid_path", "data.valid_fraction", "data.seed", "data.mode", "data.seq_len",
    "data.batch_size", "run.valid_batches", "run.teacher", "run.valid_tasks", "run.valid_task_items",
    "run.valid_task_max_new_tokens", "teacher", "seq_len", "batch", "valid_batches"};

std::vector<Point> raw_points(const std::vector<MetricRecord>& records, std::string_view key) {
  std::vector<Point> pts;
  for (const auto& r : records) {
    if (auto v = value_of(r, key)) pts.push_back({static_cast<double>(r.step), *v});
  }
  return pts;
}

// Bucket means over equal runs of points: the curve's shape survives, the file stays small.
std::vector<Point> bucketed(const std::vector<Point>& pts) {
  if (pts.size() <= kMaxPointsPerSeries) return pts;
  std::vector<Point> out;
  const size_t bucket = (pts.size() + kMaxPointsPerSeries - 1) / kMaxPointsPerSeries;
  for (size_t i = 0; i < pts.size(); i += bucket) {
    double sx = 0, sy = 0;
    size_t n = 0;
    for (size_t j = i; j < std::min(pts.size(), i + bucket); ++j, ++n) sx += pts[j].x, sy += pts[j].y;
    out.push_back({sx / n, sy / n});
  }
  return out;
}

// Log y when every value is positive and they span more than a factor of 20.
bool wants_log(const LineChart& c) {
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (const auto& s : c.series) {
    for (const auto& p : s.points) {
      if (!std::isfinite(p.y)) continue;
      if (p.y <= 0) return false;
      lo = std::min(lo, p.y), hi = std::max(hi, p.y);
    }
  }
  return hi > 0 && hi / lo > 20;
}

LineChart base_chart(const std::string& title, const std::string& y_label, const std::string& id) {
  LineChart c;
  c.title = title;
  c.x_label = "training step";
  c.y_label = y_label;
  c.width = 600;
  c.height = 340;
  c.id = id;
  return c;
}

std::string smoothing_caption(double smooth) {
  if (smooth <= 0) return "Raw per-step values (no smoothing; qad report --smooth 0.9 smooths).";
  return fmt::format("Smoothed: exponential moving average with weight {} per logged record (debiased at the "
                     "start); the raw values are the faint lines behind.",
                     format_number(smooth, 4));
}

// A chart of a per-step metric: one series per run that logged it; smoothed, the raw series go faint behind.
// `only`: the runs to draw (all when empty); the others keep their colour index free.
std::optional<LineChart> step_chart(const std::vector<RunData>& runs, const MetricSpec& spec, const std::string& id,
                                    double smooth, const std::vector<bool>& only = {}) {
  LineChart c = base_chart(spec.title, spec.y_label, id);
  std::vector<Series> faint, solid;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (!only.empty() && !only[i]) continue;
    const auto pts = raw_points(runs[i].train, spec.key);
    if (pts.empty()) continue;
    const std::string& name = runs[i].name;
    if (smooth > 0) {
      faint.push_back({name, bucketed(pts), i, true});
      solid.push_back({name, bucketed(ema_smooth(pts, smooth)), i});
    } else {
      solid.push_back({name, bucketed(pts), i});
    }
  }
  if (solid.empty()) return std::nullopt;
  c.series = std::move(faint);
  c.series.insert(c.series.end(), solid.begin(), solid.end());
  c.log_y = wants_log(c);
  return c;
}

Figure figure(const LineChart& c, std::string caption = {}) { return {render_line_chart(c), std::move(caption), false}; }

// The first validation-split setting on which two runs disagree, as text; empty when none.
std::string split_difference(const RunData& a, const RunData& b) {
  const Settings sa = flatten_config(a.config), sb = flatten_config(b.config);
  for (const char* key : kValidationSplitKeys) {
    auto ia = std::find_if(sa.begin(), sa.end(), [&](const auto& p) { return p.first == key; });
    auto ib = std::find_if(sb.begin(), sb.end(), [&](const auto& p) { return p.first == key; });
    if (ia != sa.end() && ib != sb.end() && ia->second != ib->second) {
      return fmt::format("{} is {} here but {} in {} ({})", key, ia->second, ib->second, b.name,
                         (b.dir / "run.json").string());
    }
  }
  return {};
}

enum class MemoryKind { kGpu, kCpu, kUnknown };

// trainer: peak_mem_gb is the CUDA caching allocator's peak on a GPU, the process's peak RSS on the CPU.
MemoryKind memory_kind(const RunData& r) {
  if (r.device == "cpu") return MemoryKind::kCpu;
  if (r.device.rfind("cuda", 0) == 0) return MemoryKind::kGpu;
  return MemoryKind::kUnknown;
}

std::optional<double> eval_value(const EvalResult& e, std::string_view key) {
  if (key == "task_accuracy") return e.task_accuracy;
  if (key == "perplexity") return e.perplexity;
  if (key == "kl") return e.kl;
  return e.agreement;
}

}  // namespace

bool is_ptq(const RunData& run) { return run.method == "ptq"; }

std::vector<Figure> training_charts(const std::vector<RunData>& runs, double smooth) {
  std::vector<Figure> out;
  for (const auto& spec : kTrainMetrics) {
    if (auto c = step_chart(runs, spec, std::string("train-") + spec.key, smooth)) {
      out.push_back(figure(*c, smoothing_caption(smooth)));
    }
  }
  return out;
}

std::vector<Figure> validation_charts(const std::vector<RunData>& runs, std::vector<std::string>& warnings) {
  // A baseline is drawn only where its figures were measured like the trained runs' ones.
  std::vector<bool> comparable(runs.size(), false);
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].kind != EntryKind::kRun || !runs[i].is_baseline()) continue;
    std::string problem;
    for (size_t j = 0; j < runs.size() && problem.empty(); ++j) {
      if (j != i && runs[j].kind == EntryKind::kRun && !runs[j].is_baseline()) {
        problem = split_difference(runs[i], runs[j]);
      }
    }
    comparable[i] = problem.empty();
    if (!problem.empty()) {
      warnings.push_back(fmt::format("{}: not drawn as a baseline on the validation charts: {}, so its validation "
                                     "figures come from other tokens; run it with the same data settings",
                                     (runs[i].dir / "run.json").string(), problem));
    }
  }
  std::vector<Figure> out;
  for (const auto& spec : kValidMetrics) {
    LineChart c = base_chart(spec.title, spec.y_label, std::string("valid-") + spec.key);
    for (size_t i = 0; i < runs.size(); ++i) {
      if (runs[i].is_baseline()) continue;
      auto pts = bucketed(raw_points(runs[i].valid, spec.key));
      if (!pts.empty()) c.series.push_back({runs[i].name, std::move(pts), i});
    }
    const bool any_trained = !c.series.empty();
    std::string caption;
    for (size_t i = 0; i < runs.size(); ++i) {
      if (!runs[i].is_baseline()) continue;
      const MetricRecord* last = nullptr;
      for (const auto& r : runs[i].valid) {
        if (value_of(r, spec.key)) last = &r;
      }
      if (!last) continue;
      const double v = *value_of(*last, spec.key);
      if (!any_trained) {  // nothing to compare with: the point itself
        c.series.push_back({runs[i].name, {{static_cast<double>(last->step), v}}, i});
      } else if (comparable[i]) {
        c.reference_lines.push_back({v, fmt::format("{} {}", runs[i].name, format_number(v, 4)), i,
                                     runs[i].name + " (baseline)"});
        caption += fmt::format("{}Dashed: {} (step {}) as a baseline.", caption.empty() ? "" : " ", runs[i].name,
                               last->step);
      }
    }
    if (c.series.empty()) continue;
    c.log_y = wants_log(c);
    if (std::string_view(spec.key) == "mean_cka") c.reference_lines.push_back({1.0, "teacher (CKA = 1)"});
    out.push_back(figure(c, caption));
  }
  return out;
}

std::vector<Figure> layer_charts(const std::vector<RunData>& runs) {
  std::vector<ModelCkaResult> results;
  std::vector<size_t> styles;
  for (size_t i = 0; i < runs.size(); ++i) {
    const MetricRecord* r = last_cka_record(runs[i]);
    if (!r) continue;
    ModelCkaResult m{fmt::format("{} (step {})", runs[i].name, r->step), {}};
    for (const auto& l : r->cka) m.layers.push_back({l.layer, l.value, kNaN, kNaN, kNaN});
    results.push_back(std::move(m));
    styles.push_back(i);
  }
  if (results.empty()) return {};
  LineChart c = cka_chart(results, CkaVariant::kBiased, "Per-layer CKA against the teacher at the last validation");
  c.y_label = "linear CKA with the teacher's layer";
  c.width = 960;
  c.height = 400;
  c.id = "layers-last";
  for (size_t i = 0; i < c.series.size(); ++i) c.series[i].style = styles[i];
  return {{render_line_chart(c),
           "Each run's last validation record with per-layer CKA (its last training record when no validation has "
           "any).",
           true}};
}

std::vector<Figure> heatmaps(const std::vector<RunData>& runs, HeatmapScale scale) {
  struct Grid {
    size_t run;
    bool from_valid;
    std::vector<const MetricRecord*> cols;
  };
  std::vector<Grid> grids;
  double shared_lo = std::numeric_limits<double>::infinity(), shared_hi = -shared_lo;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& run = runs[i];
    if (run.is_baseline()) continue;
    const bool from_valid =
        std::any_of(run.valid.begin(), run.valid.end(), [](const MetricRecord& r) { return !r.cka.empty(); });
    std::vector<const MetricRecord*> cols;
    for (const auto& r : from_valid ? run.valid : run.train) {
      if (!r.cka.empty()) cols.push_back(&r);
    }
    if (cols.empty()) continue;
    if (cols.size() > kMaxHeatmapColumns) {  // evenly spaced columns, always keeping the last one
      std::vector<const MetricRecord*> kept;
      for (size_t k = 0; k < kMaxHeatmapColumns; ++k) kept.push_back(cols[k * (cols.size() - 1) / (kMaxHeatmapColumns - 1)]);
      cols = kept;
    }
    for (const auto* r : cols) {
      for (const auto& l : r->cka) {
        if (std::isfinite(l.value)) shared_lo = std::min(shared_lo, l.value), shared_hi = std::max(shared_hi, l.value);
      }
    }
    grids.push_back({i, from_valid, std::move(cols)});
  }
  std::vector<Figure> out;
  for (const auto& g : grids) {
    const auto& run = runs[g.run];
    Heatmap h;
    h.title = fmt::format("{}: per-layer CKA over training ({} steps)", run.name, g.from_valid ? "validation" : "training");
    h.x_label = "training step";
    h.y_label = "layer";
    h.value_label = scale == HeatmapScale::kOwn ? "CKA (own scale)" : "CKA (shared scale)";
    h.row_labels = run.layer_names();
    h.id = fmt::format("heatmap-{}", g.run);
    h.width = 960;
    std::map<std::string, size_t> row_of;
    for (size_t r = 0; r < h.row_labels.size(); ++r) row_of[h.row_labels[r]] = r;
    h.values.assign(h.row_labels.size(), std::vector<double>(g.cols.size(), kNaN));
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (size_t c = 0; c < g.cols.size(); ++c) {
      h.col_labels.push_back(count(static_cast<double>(g.cols[c]->step)));
      for (const auto& l : g.cols[c]->cka) {
        h.values[row_of[l.layer]][c] = l.value;
        if (std::isfinite(l.value)) lo = std::min(lo, l.value), hi = std::max(hi, l.value);
      }
    }
    std::string caption;
    if (scale == HeatmapScale::kShared && shared_lo <= shared_hi) {
      h.v_min = shared_lo, h.v_max = shared_hi;
      caption = fmt::format("Colour scale shared by all heatmaps: CKA {} (dark) to {} (yellow).",
                            format_number(shared_lo, 5), format_number(shared_hi, 5));
    } else if (lo <= hi) {
      caption = fmt::format("Colour scale: this run's own range, CKA {} (dark) to {} (yellow); colours do not "
                            "compare between heatmaps (--heatmap-scale shared gives them one scale).",
                            format_number(lo, 5), format_number(hi, 5));
    }
    out.push_back({render_heatmap(h), caption, true});
  }
  return out;
}

std::vector<Figure> system_charts(const std::vector<RunData>& runs, double smooth) {
  std::vector<Figure> out;
  // The learning rate follows its schedule exactly: smoothing it would only blur the warm-up.
  if (auto c = step_chart(runs, {"lr", "Learning rate", "learning rate"}, "system-lr", 0)) out.push_back(figure(*c));
  for (const MetricSpec spec : {MetricSpec{"grad_norm", "Gradient norm", "gradient norm (L2, all parameters)"},
                                MetricSpec{"tokens_per_s", "Throughput", "tokens per second"}}) {
    if (auto c = step_chart(runs, spec, std::string("system-") + spec.key, smooth)) {
      out.push_back(figure(*c, smoothing_caption(smooth)));
    }
  }
  // Peak memory means a different thing per device: one chart per kind, each titled with what it measures.
  struct MemoryChart {
    MemoryKind kind;
    const char* id;
    MetricSpec spec;
    const char* caption;
  };
  const MemoryChart kMemoryCharts[] = {
      {MemoryKind::kGpu, "system-peak_mem_gb-gpu",
       {"peak_mem_gb", "Peak GPU memory (CUDA caching allocator)", "GB allocated, peak since the start"}, ""},
      {MemoryKind::kCpu, "system-peak_mem_gb-cpu",
       {"peak_mem_gb", "Peak process memory (CPU runs: resident set size)", "GB resident, peak since the start"},
       "CPU runs: the process's peak resident set size (teacher, student, data and all), not a GPU figure."},
      {MemoryKind::kUnknown, "system-peak_mem_gb-auto",
       {"peak_mem_gb", "Peak memory (device auto)", "GB, peak since the start"},
       "Runs with --device auto: the CUDA caching allocator's peak where CUDA was visible, else the process's "
       "peak resident set size (run.json does not record which)."},
  };
  for (const auto& m : kMemoryCharts) {
    std::vector<bool> only(runs.size());
    for (size_t i = 0; i < runs.size(); ++i) only[i] = memory_kind(runs[i]) == m.kind;
    if (std::find(only.begin(), only.end(), true) == only.end()) continue;
    if (auto c = step_chart(runs, m.spec, m.id, 0, only)) out.push_back(figure(*c, m.caption));
  }
  return out;
}

std::vector<Figure> evaluation_charts(const std::vector<RunData>& runs, const EvalResult* teacher) {
  constexpr MetricSpec kEvalMetrics[] = {
      {"task_accuracy", "Evaluation: task accuracy", "accuracy (fraction of items)"},
      {"perplexity", "Evaluation: perplexity", "perplexity"},
      {"kl", "Evaluation: KL(teacher ‖ model)", "KL (nats/token)"},
      {"agreement", "Evaluation: top-1 agreement with the teacher", "agreement (fraction of tokens)"},
  };
  std::vector<size_t> dots, references;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].eval) (is_ptq(runs[i]) ? references : dots).push_back(i);
  }
  if (dots.empty()) std::swap(dots, references);  // nothing to compare with PTQ: show PTQ itself
  std::vector<Figure> out;
  for (const auto& spec : kEvalMetrics) {
    LineChart c = base_chart(spec.title, spec.y_label, std::string("eval-") + spec.key);
    c.x_label = "model (qad eval)";
    // Categories at 0..n-1, with unlabelled ends so that the outer dots and names keep clear of the axes.
    c.x_ticks.push_back({-0.6, ""});
    for (size_t k = 0; k < dots.size(); ++k) {
      const auto& run = runs[dots[k]];
      const auto v = eval_value(*run.eval, spec.key);
      c.x_ticks.push_back({static_cast<double>(k), run.name});
      if (v) c.series.push_back({run.name, {{static_cast<double>(k), *v}}, dots[k]});
    }
    c.x_ticks.push_back({static_cast<double>(dots.size()) - 0.4, ""});
    // The names are the categories: shortened to their slot rather than thinned out (full name in the dot's
    // tooltip); the reference lines carry their own labels, so no legend.
    c.legend = false;
    const ChartLayout layout = layout_line_chart(c);
    // The domain spans n + 0.2 categories plus 3% padding each side (layout_line_chart); tick labels are 11 px.
    const double slot = layout.plot_width / ((static_cast<double>(dots.size()) + 0.2) * 1.06) - 10;
    for (auto& t : c.x_ticks) t.label = ellipsize(t.label, 11, slot);
    std::string caption = "One dot per evaluated model";
    if (teacher) {
      if (auto v = eval_value(*teacher, spec.key)) {
        c.reference_lines.push_back({*v, "teacher " + format_number(*v, 4), std::nullopt, "teacher"});
        caption += "; grey dashed: the teacher";
      }
    }
    bool any_reference = false;
    for (size_t i : references) {
      if (auto v = eval_value(*runs[i].eval, spec.key)) {
        c.reference_lines.push_back({*v, fmt::format("{} {}", runs[i].name, format_number(*v, 4)), i,
                                     runs[i].name + " (baseline)"});
        any_reference = true;
      }
    }
    if (any_reference) caption += "; coloured dashed: PTQ";
    if (c.series.empty()) continue;
    caption += ". From each model's eval.json (qad eval), not from the training validation split.";
    out.push_back(figure(c, caption));
  }
  return out;
}

}  // namespace qad::report
