// Summary files (see summary_files.h).
#include "experiment/summary_files.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "util/atomic_file.h"

namespace qad::experiment {
namespace {

nlohmann::json opt(const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

nlohmann::json stats_json(const Stats& st) {
  return {{"n", st.n},
          {"mean", st.mean},
          {"std", opt(st.std_dev)},
          {"stderr", opt(st.std_err)},
          {"ci95", st.ci_low ? nlohmann::json::array({*st.ci_low, *st.ci_high}) : nlohmann::json(nullptr)}};
}

std::string num(double v) { return fmt::format("{:.5g}", v); }
std::string num(const std::optional<double>& v) { return v ? num(*v) : "—"; }
std::string csv_num(const std::optional<double>& v) { return v ? fmt::format("{:.10g}", *v) : ""; }

std::string mean_std(const Stats& st) {
  return st.std_dev ? fmt::format("{} ± {}", num(st.mean), num(st.std_dev)) : num(st.mean);
}

std::string ci(const Stats& st) {
  return st.ci_low ? fmt::format("[{}, {}]", num(st.ci_low), num(st.ci_high)) : "—";
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string pair_label(const PairedRow& r) {
  return fmt::format("{} − {}{}", r.a, r.b, r.variant.empty() ? "" : " (" + r.variant + ")");
}

// The metrics among `names` that some group has, in the summary's order.
std::vector<std::string> present(const Summary& s, const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (const auto& m : names) {
    if (std::find(s.metrics.begin(), s.metrics.end(), m) != s.metrics.end()) out.push_back(m);
  }
  return out;
}

}  // namespace

nlohmann::json summary_json(const Summary& s) {
  nlohmann::json cells = nlohmann::json::array();
  for (const auto& c : s.cells) {
    nlohmann::json e = {{"name", c.name}, {"group", c.group}, {"seed", c.seed}, {"state", c.state},
                        {"metrics", c.metrics}};
    if (c.state == "failed") {
      e["exit"] = c.status.value("exit", "");
      e["exit_code"] = c.status.value("exit_code", -1);
      e["phase"] = c.status.value("phase", "");
      e["log_tail"] = c.status.value("log_tail", nlohmann::json::array());
    }
    cells.push_back(std::move(e));
  }
  nlohmann::json groups = nlohmann::json::array();
  for (const auto& g : s.groups) {
    nlohmann::json metrics = nlohmann::json::object();
    for (const auto& m : s.metrics) {
      const auto it = g.metrics.find(m);
      if (it != g.metrics.end()) metrics[m] = stats_json(it->second);
    }
    groups.push_back({{"name", g.name}, {"method", g.method}, {"variant", g.variant}, {"cells", g.cells},
                      {"seeds", g.seeds}, {"metrics", metrics}});
  }
  nlohmann::json paired = nlohmann::json::array();
  for (const auto& r : s.paired) {
    auto e = stats_json(r.diff.stats);
    e["a"] = r.a;
    e["b"] = r.b;
    e["variant"] = r.variant;
    e["metric"] = r.metric;
    e["seeds"] = r.diff.seeds;
    e["differences"] = r.diff.differences;
    e["verdict"] = r.verdict;
    paired.push_back(std::move(e));
  }
  nlohmann::json failed = nlohmann::json::array(), unfinished = nlohmann::json::array();
  for (const auto& c : s.cells) {
    if (c.state == "failed") failed.push_back(c.name);
    if (c.state != "finished" && c.state != "failed") unfinished.push_back(c.name);
  }
  return {{"experiment", s.experiment}, {"cells_total", s.cells.size()}, {"cells_finished", s.count("finished")},
          {"failed", failed}, {"unfinished", unfinished}, {"confidence", 0.95}, {"groups", groups},
          {"paired", paired}, {"cells", cells}};
}

namespace {

// The most cells that shared one device while a finished cell ran (status.json's cells_at_once; 1 when absent).
int64_t most_cells_at_once(const Summary& s) {
  int64_t most = 1;
  for (const auto& c : s.cells) {
    if (c.state == "finished" && c.status.is_object()) most = std::max(most, c.status.value("cells_at_once", int64_t{1}));
  }
  return most;
}

}  // namespace

std::string summary_markdown(const Summary& s) {
  std::string md = fmt::format("# Experiment `{}`\n\n{} of {} cells finished", s.experiment, s.count("finished"),
                               s.cells.size());
  if (s.count("failed")) md += fmt::format(", {} failed", s.count("failed"));
  md += ". Mean ± sample standard deviation over seeds; 95 % intervals from Student's t (docs/experiments.md).\n\n";

  std::vector<std::string> columns = present(s, headline_metrics());
  if (std::find(s.metrics.begin(), s.metrics.end(), "train_seconds") != s.metrics.end()) {
    columns.push_back("train_seconds");
  }
  md += "## Groups\n\n| group | n |";
  for (const auto& m : columns) md += fmt::format(" {} |", m);
  md += "\n|---|---:|";
  for (size_t i = 0; i < columns.size(); ++i) md += "---:|";
  md += "\n";
  for (const auto& g : s.groups) {
    md += fmt::format("| {} | {} |", g.name, g.seeds.size());
    for (const auto& m : columns) {
      const auto it = g.metrics.find(m);
      md += fmt::format(" {} |", it == g.metrics.end() ? std::string("—") : mean_std(it->second));
    }
    md += "\n";
  }
  if (const int64_t shared = most_cells_at_once(s); shared > 1 && !columns.empty() && columns.back() == "train_seconds") {
    md += fmt::format("\ntrain_seconds: up to {} cells ran at once on one device, so a cell's time includes its "
                      "neighbours' load: not a speed comparison (benchmark the step alone for that).\n",
                      shared);
  }

  std::vector<std::string> layers;
  for (const auto& m : s.metrics) {
    if (m.rfind("cka.", 0) == 0) layers.push_back(m);
  }
  if (!layers.empty()) {
    md += "\n## Per-layer CKA (mean over seeds)\n\n| group |";
    for (const auto& l : layers) md += fmt::format(" {} |", l.substr(4));
    md += "\n|---|";
    for (size_t i = 0; i < layers.size(); ++i) md += "---:|";
    md += "\n";
    for (const auto& g : s.groups) {
      md += fmt::format("| {} |", g.name);
      for (const auto& l : layers) {
        const auto it = g.metrics.find(l);
        md += fmt::format(" {} |", it == g.metrics.end() ? std::string("—") : num(it->second.mean));
      }
      md += "\n";
    }
  }

  const std::vector<std::string> paired_metrics = present(s, columns);
  md += "\n## Paired differences (a − b, matched by seed)\n\n";
  bool any = false;
  for (const auto& r : s.paired) any |= std::find(paired_metrics.begin(), paired_metrics.end(), r.metric) !=
                                        paired_metrics.end();
  if (!any) {
    md += "None yet: a comparison needs both sides finished for the same seed.\n";
  } else {
    md += "| comparison | metric | n | mean ± std | 95 % CI | verdict |\n|---|---|---:|---:|---|---|\n";
    for (const auto& r : s.paired) {
      if (std::find(paired_metrics.begin(), paired_metrics.end(), r.metric) == paired_metrics.end()) continue;
      md += fmt::format("| {} | {} | {} | {} | {} | {} |\n", pair_label(r), r.metric, r.diff.stats.n,
                        mean_std(r.diff.stats), ci(r.diff.stats), r.verdict);
    }
    md += "\nPer-layer CKA and every other metric: summary.json / summary.csv.\n";
  }

  if (s.count("failed")) {
    md += "\n## Failed cells\n\n";
    for (const auto& c : s.cells) {
      if (c.state != "failed") continue;
      md += fmt::format("- `{}`: {} (phase {}); log: `cells/{}/log.txt`\n", c.name, c.status.value("exit", "?"),
                        c.status.value("phase", "?"), c.name);
    }
  }
  std::vector<std::string> unfinished;
  for (const auto& c : s.cells) {
    if (c.state != "finished" && c.state != "failed") unfinished.push_back(fmt::format("`{}` ({})", c.name, c.state));
  }
  if (!unfinished.empty()) {
    md += "\n## Unfinished cells\n\n";
    for (const auto& u : unfinished) md += "- " + u + "\n";
    md += "\nRun the same `qad experiment` command again to continue them.\n";
  }
  return md;
}

std::string summary_csv(const Summary& s) {
  std::string csv = "table,name,variant,metric,n,mean,std,stderr,ci95_low,ci95_high,verdict\n";
  auto row = [&](const std::string& table, const std::string& name, const std::string& variant,
                 const std::string& metric, const Stats& st, const std::string& verdict) {
    csv += fmt::format("{},{},{},{},{},{},{},{},{},{},{}\n", table, csv_field(name), csv_field(variant),
                       csv_field(metric), st.n, csv_num(st.mean), csv_num(st.std_dev), csv_num(st.std_err),
                       csv_num(st.ci_low), csv_num(st.ci_high), csv_field(verdict));
  };
  for (const auto& g : s.groups) {
    for (const auto& m : s.metrics) {
      const auto it = g.metrics.find(m);
      if (it != g.metrics.end()) row("group", g.name, g.variant, m, it->second, "");
    }
  }
  for (const auto& r : s.paired) row("paired", r.a + " - " + r.b, r.variant, r.metric, r.diff.stats, r.verdict);
  for (const auto& c : s.cells) {
    for (const auto& m : s.metrics) {
      const auto it = c.metrics.find(m);
      if (it == c.metrics.end()) continue;
      Stats one;
      one.n = 1;
      one.mean = it->second;
      row("cell", c.name, "", m, one, "");
    }
  }
  return csv;
}

void write_summary_files(const Summary& s, const std::filesystem::path& out) {
  write_file_atomic(out / "summary.json", summary_json(s).dump(2) + "\n");
  write_file_atomic(out / "summary.md", summary_markdown(s));
  write_file_atomic(out / "summary.csv", summary_csv(s));
}

}  // namespace qad::experiment
