// The experiment page (experiment_report.h). Charts use the line-chart primitive with one point per group and
// an error bar, so every chart of the report looks alike.
#include "report/experiment_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "qad/version.h"
#include "report/html_report.h"
#include "report/report_charts.h"
#include "report/svg_common.h"
#include "report/svg_plot.h"
#include "report/table.h"
#include "report/ticks.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::report {
namespace fs = std::filesystem;
namespace {

// The headline metrics, in this order, when the summary has them; per-layer CKA has its own chart.
const char* const kMetrics[] = {"kl", "ppl", "agreement", "mean_cka", "eval.accuracy"};

const char* metric_label(const std::string& m) {
  if (m == "kl") return "held-out KL to the teacher";
  if (m == "ppl") return "held-out perplexity";
  if (m == "agreement") return "top-1 agreement with the teacher";
  if (m == "mean_cka") return "mean CKA over layers";
  if (m == "eval.accuracy") return "task accuracy";
  return "";
}

struct Stat {
  double mean = NAN, std = NAN, lo = NAN, hi = NAN;
  int64_t n = 0;
};

struct Group {
  std::string name;
  std::map<std::string, Stat> metrics;
};

double number_or_nan(const nlohmann::json& j) { return j.is_number() ? j.get<double>() : NAN; }

std::vector<Group> read_groups(const nlohmann::json& summary, const std::string& source) {
  QAD_CHECK(summary.is_object() && summary.contains("groups") && summary["groups"].is_array(),
            "{}: no \"groups\" array (is this a qad experiment summary.json?)", source);
  std::vector<Group> groups;
  for (const auto& g : summary["groups"]) {
    QAD_CHECK(g.is_object() && g.contains("name") && g["name"].is_string() && g.contains("metrics") &&
                  g["metrics"].is_object(),
              "{}: a group without \"name\" or \"metrics\"", source);
    Group out{g["name"].get<std::string>(), {}};
    for (const auto& [metric, st] : g["metrics"].items()) {
      if (!st.is_object()) continue;
      Stat s;
      s.mean = number_or_nan(st.value("mean", nlohmann::json()));
      s.std = number_or_nan(st.value("std", nlohmann::json()));
      s.n = st.value("n", int64_t{0});
      if (st.contains("ci95") && st["ci95"].is_array() && st["ci95"].size() == 2) {
        s.lo = number_or_nan(st["ci95"][0]);
        s.hi = number_or_nan(st["ci95"][1]);
      }
      out.metrics[metric] = s;
    }
    groups.push_back(std::move(out));
  }
  return groups;
}

std::string mean_std(const Stat& s) {
  if (!std::isfinite(s.mean)) return "-";
  if (!std::isfinite(s.std)) return fmt::format("{} (n {})", format_number(s.mean, 5), s.n);
  return fmt::format("{} ± {} (n {})", format_number(s.mean, 5), format_number(s.std, 2), s.n);
}

// One chart per headline metric: x = the groups, one point each with its 95 % interval.
Figure metric_chart(const std::vector<Group>& groups, const std::string& metric) {
  LineChart c;
  c.title = metric_label(metric);
  c.y_label = metric;
  c.width = 480;
  c.height = 320;
  c.legend = false;
  c.id = "exp-" + metric;
  for (size_t i = 0; i < groups.size(); ++i) {
    c.x_ticks.push_back({static_cast<double>(i), groups[i].name});
    Series s;
    s.name = groups[i].name;
    s.style = i;
    if (auto it = groups[i].metrics.find(metric); it != groups[i].metrics.end()) {
      s.points.push_back({static_cast<double>(i), it->second.mean, it->second.lo, it->second.hi});
    }
    c.series.push_back(std::move(s));
  }
  // Room around the first and last group.
  c.x_ticks.push_back({-0.5, ""});
  c.x_ticks.push_back({static_cast<double>(groups.size()) - 0.5, ""});
  return {render_line_chart(c), fmt::format("{}: mean over seeds per group; bars: 95 % interval (Student's t).",
                                            metric_label(metric)),
          false};
}

// Layer names "cka.<layer>" in the order of the layer index when there is one ("layers.10" after "layers.9").
std::vector<std::string> cka_layers(const std::vector<Group>& groups) {
  std::vector<std::string> names;
  for (const auto& g : groups) {
    for (const auto& [m, s] : g.metrics) {
      if (m.rfind("cka.", 0) == 0 && std::find(names.begin(), names.end(), m) == names.end()) names.push_back(m);
    }
  }
  auto index = [](const std::string& m) {
    const auto dot = m.find_last_of('.');
    try {
      return std::stod(m.substr(dot + 1));
    } catch (const std::exception&) {
      return 1e9;  // "cka.norm" and the like after the numbered layers
    }
  };
  std::stable_sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) { return index(a) < index(b); });
  return names;
}

Figure cka_chart(const std::vector<Group>& groups, const std::vector<std::string>& layers) {
  LineChart c;
  c.title = "per-layer CKA with the teacher";
  c.x_label = "layer";
  c.y_label = "linear CKA";
  c.width = 940;
  c.height = 380;
  c.id = "exp-cka";
  for (size_t i = 0; i < layers.size(); ++i) {
    std::string label = layers[i].substr(4);  // "cka.layers.12" -> "12", "cka.norm" -> "norm"
    if (label.rfind("layers.", 0) == 0) label = label.substr(7);
    c.x_ticks.push_back({static_cast<double>(i), label});
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    Series s;
    s.name = groups[gi].name;
    s.style = gi;
    // Groups side by side around each layer (a small dodge), so that their error bars do not cover each other.
    const double dodge = groups.size() > 1 ? 0.08 * (static_cast<double>(gi) - (groups.size() - 1) / 2.0) : 0.0;
    for (size_t i = 0; i < layers.size(); ++i) {
      if (auto it = groups[gi].metrics.find(layers[i]); it != groups[gi].metrics.end()) {
        s.points.push_back({static_cast<double>(i) + dodge, it->second.mean, it->second.lo, it->second.hi});
      }
    }
    c.series.push_back(std::move(s));
  }
  return {render_line_chart(c), "Per-layer CKA: mean over seeds per group; bars: 95 % interval (Student's t).", true};
}

Table group_table(const std::vector<Group>& groups, const std::vector<std::string>& metrics) {
  Table t;
  t.columns = {"group"};
  for (const auto& m : metrics) t.columns.push_back(m);
  for (const auto& g : groups) {
    std::vector<std::string> row = {g.name};
    for (const auto& m : metrics) {
      auto it = g.metrics.find(m);
      row.push_back(it == g.metrics.end() ? "-" : mean_std(it->second));
    }
    t.rows.push_back(std::move(row));
  }
  return t;
}

Table paired_table(const nlohmann::json& summary) {
  Table t;
  t.columns = {"comparison", "variant", "metric", "n", "mean difference", "95 % interval", "verdict"};
  if (!summary.contains("paired") || !summary["paired"].is_array()) return t;
  for (const auto& p : summary["paired"]) {
    if (!p.is_object()) continue;
    const auto ci = p.value("ci95", nlohmann::json::array());
    std::string interval = "-";
    if (ci.is_array() && ci.size() == 2 && ci[0].is_number() && ci[1].is_number()) {
      interval = fmt::format("[{}, {}]", format_number(ci[0].get<double>(), 4), format_number(ci[1].get<double>(), 4));
    }
    t.rows.push_back({fmt::format("{} − {}", p.value("a", std::string()), p.value("b", std::string())),
                      p.value("variant", std::string()), p.value("metric", std::string()),
                      std::to_string(p.value("n", int64_t{0})),
                      p.contains("mean") && p["mean"].is_number() ? format_number(p["mean"].get<double>(), 4) : "-",
                      interval, p.value("verdict", std::string())});
  }
  return t;
}

}  // namespace

bool is_experiment_dir(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) && fs::exists(dir / "summary.json", ec) && fs::exists(dir / "grid.json", ec);
}

std::string render_experiment_report(const nlohmann::json& summary, const std::string& title,
                                     const std::string& source) {
  const auto groups = read_groups(summary, source);
  QAD_CHECK(!groups.empty(), "{}: no groups: the experiment has no finished cell yet (qad experiment ... "
            "--summarize-only writes the summary of what has finished)", source);
  std::vector<std::string> metrics;
  for (const char* m : kMetrics) {
    if (std::any_of(groups.begin(), groups.end(), [&](const Group& g) { return g.metrics.count(m) > 0; })) {
      metrics.push_back(m);
    }
  }
  const auto layers = cka_layers(groups);
  std::string html = fmt::format("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>"
                                 "<style>{}</style></head><body><main>\n<h1>{}</h1>\n",
                                 xml_escape(title), report_css(), xml_escape(title));
  html += fmt::format("<p class=\"meta\">experiment <b>{}</b>: {} of {} cells finished{}. Mean ± sample standard "
                      "deviation over seeds; error bars are 95 % intervals from Student's t, so with 3 seeds they "
                      "are about ±2.5 standard deviations wide.</p>\n",
                      xml_escape(summary.value("experiment", std::string("?"))), summary.value("cells_finished", 0),
                      summary.value("cells_total", 0),
                      summary.value("failed", nlohmann::json::array()).empty() ? "" : ", some failed (summary.md)");
  html += "<h2>Groups</h2>\n" + to_html(group_table(groups, metrics));
  html += "<h2>Paired differences (matched by seed)</h2>\n" + to_html(paired_table(summary));
  html += "<p class=\"note\">A difference is stated only when its 95 % interval excludes 0; otherwise the verdict "
          "is \"within noise\".</p>\n";
  std::vector<Figure> charts;
  for (const auto& m : metrics) charts.push_back(metric_chart(groups, m));
  html += "<h2>Metrics</h2>\n" + render_figures(charts, "No headline metric in the summary.");
  if (!layers.empty()) html += "<h2>Per-layer CKA</h2>\n" + render_figures({cka_chart(groups, layers)}, "");
  html += fmt::format("<footer>qad {} · qad report</footer>\n</main></body></html>\n", QAD_VERSION);
  return html;
}

void write_experiment_report(const fs::path& dir, const fs::path& out, const std::string& title) {
  const auto file = dir / "summary.json";
  nlohmann::json summary;
  try {
    summary = nlohmann::json::parse(read_file(file));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({}); rewrite it with qad experiment --config ... --out {} --summarize-only",
         file.string(), e.what(), dir.string());
  }
  write_file_atomic(out, render_experiment_report(summary, title, file.string()));
}

}  // namespace qad::report
