// The HTML run report (see html_report.h and docs/report.md).
#include "report/html_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "qad/version.h"
#include "report/cka_output.h"
#include "report/svg_common.h"
#include "report/svg_heatmap.h"
#include "report/svg_plot.h"
#include "report/ticks.h"
#include "util/atomic_file.h"

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
    {"loss", "Training: total loss", "loss"},
    {"kl", "Training: KL(teacher || student)", "KL (nats/token)"},
    {"ce", "Training: cross-entropy", "CE (nats/token)"},
    {"cka_loss", "Training: CKA term", "sum of (1 - CKA)"},
};
constexpr MetricSpec kValidMetrics[] = {
    {"kl", "Validation: KL(teacher || student)", "KL (nats/token)"},
    {"mean_cka", "Validation: mean layer CKA", "mean CKA"},
    {"ppl", "Validation: perplexity", "perplexity"},
    {"agreement", "Validation: top-1 agreement with the teacher", "agreement"},
};
constexpr MetricSpec kSystemMetrics[] = {
    {"lr", "Learning rate", "lr"},
    {"grad_norm", "Gradient norm", "grad norm"},
    {"tokens_per_s", "Throughput", "tokens/s"},
    {"peak_mem_gb", "Peak GPU memory", "GB"},
};

// A record's mean CKA: the logged value, else the mean of its per-layer values.
std::optional<double> mean_cka(const MetricRecord& r) {
  if (auto v = r.get("mean_cka")) return v;
  double sum = 0;
  int n = 0;
  for (const auto& l : r.cka) {
    if (std::isfinite(l.value)) sum += l.value, ++n;
  }
  if (n == 0) return std::nullopt;
  return sum / n;
}

std::optional<double> value_of(const MetricRecord& r, std::string_view key) {
  return key == "mean_cka" ? mean_cka(r) : r.get(key);
}

std::optional<double> last_value(const std::vector<MetricRecord>& records, std::string_view key) {
  for (auto it = records.rbegin(); it != records.rend(); ++it) {
    if (auto v = value_of(*it, key)) return v;
  }
  return std::nullopt;
}

// The last record with per-layer CKA: validation first, training as a fallback.
const MetricRecord* last_cka_record(const RunData& run) {
  for (const auto* records : {&run.valid, &run.train}) {
    for (auto it = records->rbegin(); it != records->rend(); ++it) {
      if (!it->cka.empty()) return &*it;
    }
  }
  return nullptr;
}

std::string num(std::optional<double> v, int significant = 4) { return v ? format_number(*v, significant) : "—"; }

std::string count(std::optional<double> v) {
  if (!v) return "—";
  const double a = std::abs(*v);
  if (a < 1e4) return format_number(*v, 6);
  const auto [scale, unit] = a >= 1e9 ? std::pair{1e9, "G"} : a >= 1e6 ? std::pair{1e6, "M"} : std::pair{1e3, "k"};
  return format_number(*v / scale, 3) + unit;
}

std::vector<Point> points_of(const std::vector<MetricRecord>& records, std::string_view key) {
  std::vector<Point> pts;
  for (const auto& r : records) {
    if (auto v = value_of(r, key)) pts.push_back({static_cast<double>(r.step), *v});
  }
  if (pts.size() <= kMaxPointsPerSeries) return pts;
  // Bucket means over equal runs of points: the curve's shape survives, the noise is averaged.
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

// One chart per metric: a series per run that has it, each run in its own colour everywhere.
std::optional<LineChart> metric_chart(const std::vector<RunData>& runs, bool valid, const MetricSpec& spec,
                                      const std::string& id) {
  LineChart c;
  c.title = spec.title;
  c.x_label = "step";
  c.y_label = spec.y_label;
  c.width = 600;
  c.height = 340;
  c.id = id;
  for (size_t i = 0; i < runs.size(); ++i) {
    auto pts = points_of(valid ? runs[i].valid : runs[i].train, spec.key);
    if (!pts.empty()) c.series.push_back({runs[i].name, std::move(pts), i});
  }
  if (c.series.empty()) return std::nullopt;
  c.log_y = wants_log(c);
  if (std::string_view(spec.key) == "mean_cka") c.reference_lines.push_back({1.0, "teacher"});
  return c;
}

void add_metric_charts(std::string& html, const std::vector<RunData>& runs, bool valid, const MetricSpec* specs,
                       size_t n, const std::string& prefix) {
  std::string charts;
  for (size_t i = 0; i < n; ++i) {
    if (auto c = metric_chart(runs, valid, specs[i], fmt::format("{}-{}", prefix, specs[i].key))) {
      charts += "<figure>\n" + render_line_chart(*c) + "</figure>\n";
    }
  }
  if (charts.empty()) {
    html += "<p class=\"note\">No run logged these metrics.</p>\n";
  } else {
    html += "<div class=\"charts\">\n" + charts + "</div>\n";
  }
}

std::string layer_chart(const std::vector<RunData>& runs) {
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
  if (results.empty()) return "<p class=\"note\">No run logged per-layer CKA.</p>\n";
  LineChart c = cka_chart(results, CkaVariant::kBiased, "Per-layer CKA against the teacher at the last validation");
  c.y_label = "CKA";
  c.width = 960;
  c.height = 400;
  c.id = "layers-last";
  for (size_t i = 0; i < c.series.size(); ++i) c.series[i].style = styles[i];
  return "<figure class=\"wide\">\n" + render_line_chart(c) + "</figure>\n";
}

std::string heatmaps(const std::vector<RunData>& runs) {
  // One colour scale for all runs, so the same colour means the same CKA in every heatmap.
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& run : runs) {
    for (const auto* records : {&run.valid, &run.train}) {
      for (const auto& r : *records) {
        for (const auto& l : r.cka) {
          if (std::isfinite(l.value)) lo = std::min(lo, l.value), hi = std::max(hi, l.value);
        }
      }
    }
  }
  std::string html;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& run = runs[i];
    const bool from_valid =
        std::any_of(run.valid.begin(), run.valid.end(), [](const MetricRecord& r) { return !r.cka.empty(); });
    std::vector<const MetricRecord*> cols;
    for (const auto& r : from_valid ? run.valid : run.train) {
      if (!r.cka.empty()) cols.push_back(&r);
    }
    if (cols.empty()) continue;
    if (cols.size() > kMaxHeatmapColumns) {  // evenly spaced columns, always keeping the last one
      std::vector<const MetricRecord*> kept;
      for (size_t k = 0; k < kMaxHeatmapColumns; ++k) {
        kept.push_back(cols[k * (cols.size() - 1) / (kMaxHeatmapColumns - 1)]);
      }
      cols = kept;
    }
    Heatmap h;
    h.title = fmt::format("{}: per-layer CKA over training ({} steps)", run.name, from_valid ? "validation" : "training");
    h.x_label = "step";
    h.y_label = "layer";
    h.value_label = "CKA";
    h.row_labels = run.layer_names();
    h.id = fmt::format("heatmap-{}", i);
    h.width = 960;
    if (lo <= hi) h.v_min = lo, h.v_max = hi;
    std::map<std::string, size_t> row_of;
    for (size_t r = 0; r < h.row_labels.size(); ++r) row_of[h.row_labels[r]] = r;
    h.values.assign(h.row_labels.size(), std::vector<double>(cols.size(), kNaN));
    for (size_t c = 0; c < cols.size(); ++c) {
      h.col_labels.push_back(count(static_cast<double>(cols[c]->step)));
      for (const auto& l : cols[c]->cka) h.values[row_of[l.layer]][c] = l.value;
    }
    html += "<figure class=\"wide\">\n" + render_heatmap(h) + "</figure>\n";
  }
  if (html.empty()) return "<p class=\"note\">No run logged per-layer CKA.</p>\n";
  return html;
}

constexpr const char* kCss = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;color:#1a1a1a;
  background:#fafafa;margin:0;padding:24px 32px;line-height:1.45}
main{max-width:1240px;margin:0 auto}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 10px;padding-bottom:4px;border-bottom:1px solid #ddd}
p.meta,p.note{color:#555;margin:4px 0 12px}
table{border-collapse:collapse;background:#fff;font-size:14px;margin:8px 0 16px;display:block;overflow-x:auto}
th,td{padding:5px 8px;border-bottom:1px solid #e4e4e4;text-align:left;white-space:nowrap}
th{background:#f0f0f0;font-weight:600;white-space:normal;vertical-align:bottom;max-width:8em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f8f8f8}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:8px}
figure.wide{margin:0 0 16px;width:fit-content;max-width:100%}
figure svg{display:block;max-width:100%;height:auto}
details{margin:6px 0}
summary{cursor:pointer;font-weight:600}
pre{background:#fff;border:1px solid #e4e4e4;padding:10px;overflow-x:auto;font-size:13px}
ul.warnings li{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px;color:#8a4b00}
footer{margin-top:32px;color:#888;font-size:13px}
)";

}  // namespace

Table summary_table(const std::vector<RunData>& runs) {
  Table t;
  t.columns = {"run", "method", "steps", "tokens", "train loss", "valid KL", "valid ppl", "mean CKA",
               "worst layer CKA", "agreement"};
  std::vector<std::string> final_keys;
  for (const auto& run : runs) {
    for (const auto& m : run.final_metrics) {
      if (std::find(final_keys.begin(), final_keys.end(), m.key) == final_keys.end()) final_keys.push_back(m.key);
    }
  }
  for (const auto& k : final_keys) t.columns.push_back("final " + k);
  for (const auto& run : runs) {
    std::optional<double> steps;
    for (const auto* records : {&run.train, &run.valid}) {
      if (!records->empty()) steps = std::max(steps.value_or(0), static_cast<double>(records->back().step));
    }
    std::optional<double> worst;
    if (const MetricRecord* r = last_cka_record(run)) {
      for (const auto& l : r->cka) {
        if (std::isfinite(l.value)) worst = std::min(worst.value_or(l.value), l.value);
      }
    }
    std::vector<std::string> row = {run.name,
                                    run.method,
                                    count(steps),
                                    count(last_value(run.train, "tokens")),
                                    num(last_value(run.train, "loss")),
                                    num(last_value(run.valid, "kl")),
                                    num(last_value(run.valid, "ppl")),
                                    num(last_value(run.valid, "mean_cka"), 5),
                                    num(worst, 5),
                                    num(last_value(run.valid, "agreement"))};
    for (const auto& k : final_keys) {
      const FinalMetric* m = run.final_metric(k);
      row.push_back(!m ? "—" : m->number ? format_number(*m->number, 5) : m->text);
    }
    t.rows.push_back(std::move(row));
  }
  return t;
}

std::string render_html_report(const std::vector<RunData>& runs, const ReportOptions& options) {
  std::string html;
  html += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  html += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  html += fmt::format("<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n<main>\n", xml_escape(options.title), kCss);
  html += fmt::format("<h1>{}</h1>\n", xml_escape(options.title));
  std::string names;
  for (const auto& run : runs) names += (names.empty() ? "" : ", ") + xml_escape(run.name);
  html += fmt::format("<p class=\"meta\">{} run{}: {}</p>\n", runs.size(), runs.size() == 1 ? "" : "s", names);

  html += "<h2>Summary</h2>\n";
  html += to_html(summary_table(runs));
  html += "<p class=\"note\">Last logged values. KL is KL(teacher || student) in nats per token; CKA is linear CKA "
          "of each layer's hidden states against the BF16 teacher (1 = same geometry). Columns \"final …\" come "
          "from final_metrics.json.</p>\n";

  html += "<h2>Training curves</h2>\n";
  add_metric_charts(html, runs, false, kTrainMetrics, std::size(kTrainMetrics), "train");
  html += "<h2>Validation</h2>\n";
  add_metric_charts(html, runs, true, kValidMetrics, std::size(kValidMetrics), "valid");
  html += "<h2>Per-layer CKA</h2>\n";
  html += layer_chart(runs);
  html += "<h2>Per-layer CKA over training</h2>\n";
  html += heatmaps(runs);
  html += "<h2>Optimizer and system</h2>\n";
  add_metric_charts(html, runs, false, kSystemMetrics, std::size(kSystemMetrics), "system");

  html += "<h2>Configurations</h2>\n";
  for (const auto& run : runs) {
    html += fmt::format("<details><summary>{} ({}) — {}</summary>\n<pre>{}</pre>\n</details>\n", xml_escape(run.name),
                        xml_escape(run.method), xml_escape(run.dir.string()), xml_escape(run.config.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace)));
  }
  std::vector<std::string> warnings;
  for (const auto& run : runs) warnings.insert(warnings.end(), run.warnings.begin(), run.warnings.end());
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
                       const ReportOptions& options) {
  write_file_atomic(out, render_html_report(runs, options));
}

}  // namespace qad::report
