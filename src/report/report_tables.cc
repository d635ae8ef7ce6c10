// The summary and evaluation tables (see report_tables.h).
#include "report/report_tables.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "report/run_metrics.h"
#include "report/ticks.h"

namespace qad::report {
namespace {

constexpr const char* kAbsent = "—";

struct Column {
  std::string name;
  std::vector<std::string> cells;
  bool drop_if_empty = true;  // metrics nobody logged are left out; a run's name and method never are
};

Table assemble(const std::vector<Column>& columns, size_t rows) {
  Table t;
  for (const auto& c : columns) {
    const bool empty = std::all_of(c.cells.begin(), c.cells.end(), [](const std::string& s) { return s == kAbsent; });
    if (c.drop_if_empty && empty && rows > 0) continue;
    t.columns.push_back(c.name);
    for (size_t r = 0; r < rows; ++r) {
      if (t.rows.size() <= r) t.rows.emplace_back();
      t.rows[r].push_back(r < c.cells.size() ? c.cells[r] : kAbsent);
    }
  }
  return t;
}

// Differing settings become columns: a row without the setting shows "—".
void add_setting_columns(std::vector<Column>& columns, const std::vector<Settings>& rows,
                         const std::vector<std::string>& differing) {
  for (const auto& name : differing) {
    Column c{name, {}, false};
    for (const auto& row : rows) {
      auto it = std::find_if(row.begin(), row.end(), [&](const auto& p) { return p.first == name; });
      c.cells.push_back(it == row.end() ? kAbsent : it->second);
    }
    columns.push_back(std::move(c));
  }
}

std::optional<double> final_number(const RunData& run, std::string_view key) {
  const FinalMetric* m = run.final_metric(key);
  return m ? m->number : std::nullopt;
}

// The last validation value, else what final_metrics.json says (the trainer writes the last validation there).
std::optional<double> valid_or_final(const RunData& run, std::string_view key) {
  if (auto v = last_value(run.valid, key)) return v;
  return final_number(run, key);
}

std::string duration(std::optional<double> s) {
  if (!s) return kAbsent;
  if (*s < 120) return format_number(*s, 3) + " s";
  if (*s < 7200) return format_number(*s / 60, 3) + " min";
  return format_number(*s / 3600, 3) + " h";
}

std::optional<double> worst_layer(const RunData& run) {
  std::optional<double> worst;
  auto consider = [&](double v) {
    if (std::isfinite(v)) worst = std::min(worst.value_or(v), v);
  };
  if (const MetricRecord* r = last_cka_record(run)) {
    for (const auto& l : r->cka) consider(l.value);
  } else {
    for (const auto& m : run.final_metrics) {
      if (m.key.rfind("cka.", 0) == 0 && m.number) consider(*m.number);
    }
  }
  return worst;
}

std::string best_checkpoint(const RunData& run) {
  const auto value = final_number(run, "best.value");
  if (!value) return kAbsent;
  const FinalMetric* metric = run.final_metric("best.metric");
  const auto step = final_number(run, "best.step");
  return fmt::format("{} {}{}", metric ? metric->text : "", format_number(*value, 4),
                     step ? " @ step " + format_number(*step, 15) : "");
}

// final_metrics.json keys the summary already shows (or shows per layer in the charts).
bool shown_elsewhere(const std::string& key) {
  static const std::set<std::string> kKnown = {"steps", "tokens", "train_seconds", "ppl", "ce", "kl",
                                               "agreement", "mean_cka", "task_accuracy", "valid_seq_len",
                                               "valid_tokens"};
  return kKnown.count(key) || key.rfind("cka.", 0) == 0 || key.rfind("best.", 0) == 0;
}

std::string method_cell(const RunData& run) {
  if (run.kind == EntryKind::kExport && run.method != "nvfp4 export") return run.method + " (NVFP4 export)";
  return run.method;
}

}  // namespace

ComparisonTable summary_table(const std::vector<RunData>& all) {
  std::vector<const RunData*> runs;
  for (const auto& r : all) {
    if (r.kind == EntryKind::kRun) runs.push_back(&r);
  }
  ComparisonTable out;
  std::vector<Settings> settings;
  for (const RunData* r : runs) {
    out.row_names.push_back(r->name);
    Settings s;
    // The output directory and the name always differ and say nothing the run column does not; the method has
    // its column; debug.* are test hooks.
    for (auto& kv : flatten_config(r->config)) {
      const auto& k = kv.first;
      if (k != "out" && k != "run.out" && k != "name" && k != "run.name" && k != "method" && !k.starts_with("debug.")) {
        s.push_back(std::move(kv));
      }
    }
    // What the validation figures were measured over (final_metrics.json) is a setting of the comparison.
    for (const auto& m : r->final_metrics) {
      if ((m.key == "valid_seq_len" || m.key == "valid_tokens") && m.number) {
        s.emplace_back("validation." + m.key.substr(6), fmt::format("{:g}", *m.number));
      }
    }
    settings.push_back(std::move(s));
  }
  const SettingsSplit split = split_settings(settings);
  out.shared = split.shared;

  std::vector<Column> columns = {{"run", {}, false}, {"method", {}, false}};
  add_setting_columns(columns, settings, split.differing);
  const size_t first_metric = columns.size();
  for (const char* name : {"steps", "tokens", "train time", "train loss", "valid KL", "valid ppl", "mean CKA",
                           "worst layer CKA", "agreement", "valid task accuracy", "best checkpoint"}) {
    columns.push_back({name, {}, true});
  }
  std::vector<std::string> extra_keys;
  for (const RunData* r : runs) {
    for (const auto& m : r->final_metrics) {
      if (!shown_elsewhere(m.key) && std::find(extra_keys.begin(), extra_keys.end(), m.key) == extra_keys.end()) {
        extra_keys.push_back(m.key);
      }
    }
  }
  for (const auto& k : extra_keys) columns.push_back({"final " + k, {}, true});

  for (const RunData* r : runs) {
    std::optional<double> steps;
    for (const auto* records : {&r->train, &r->valid}) {
      if (!records->empty()) steps = std::max(steps.value_or(0), static_cast<double>(records->back().step));
    }
    if (!steps) steps = final_number(*r, "steps");
    auto tokens = last_value(r->train, "tokens");
    if (!tokens) tokens = final_number(*r, "tokens");
    columns[0].cells.push_back(r->name);
    columns[1].cells.push_back(method_cell(*r));
    const std::vector<std::string> metrics = {count(steps),
                                              count(tokens),
                                              duration(final_number(*r, "train_seconds")),
                                              num(last_value(r->train, "loss")),
                                              num(valid_or_final(*r, "kl")),
                                              num(valid_or_final(*r, "ppl")),
                                              num(valid_or_final(*r, "mean_cka"), 5),
                                              num(worst_layer(*r), 5),
                                              num(valid_or_final(*r, "agreement")),
                                              num(valid_or_final(*r, "task_accuracy")),
                                              best_checkpoint(*r)};
    for (size_t i = 0; i < metrics.size(); ++i) columns[first_metric + i].cells.push_back(metrics[i]);
    for (size_t i = 0; i < extra_keys.size(); ++i) {
      const FinalMetric* m = r->final_metric(extra_keys[i]);
      columns[first_metric + metrics.size() + i].cells.push_back(!m           ? kAbsent
                                                                 : m->number ? format_number(*m->number, 5)
                                                                             : m->text);
    }
  }
  out.table = assemble(columns, runs.size());
  return out;
}

ComparisonTable evaluation_table(const std::vector<RunData>& runs, const EvalResult* teacher) {
  struct Row {
    std::string name, method;
    const EvalResult* eval;
  };
  std::vector<Row> rows;
  if (teacher) {
    std::string label = teacher->model.empty() ? teacher->model_dir : teacher->model;
    while (label.size() > 1 && label.back() == '/') label.pop_back();
    const std::string leaf = std::filesystem::path(label).filename().string();
    rows.push_back({leaf.empty() ? "teacher" : "teacher: " + leaf, "teacher", teacher});
  }
  for (const auto& r : runs) {
    if (r.eval) rows.push_back({r.name, method_cell(r), &*r.eval});
  }
  ComparisonTable out;
  std::vector<Settings> settings;
  for (const auto& row : rows) {
    out.row_names.push_back(row.name);
    Settings s;
    for (const auto& e : row.eval->settings) s.emplace_back(e.name, e.value);
    settings.push_back(std::move(s));
  }
  const SettingsSplit split = split_settings(settings);
  out.shared = split.shared;

  // A figure next to one measured on other data or with other task rules would read as comparable: say so.
  for (const auto& name : split.differing) {
    bool defines = false;
    std::vector<std::pair<std::string, std::vector<std::string>>> values;  // value -> rows, first-seen order
    for (const auto& row : rows) {
      for (const auto& e : row.eval->settings) {
        if (e.name != name) continue;
        defines = defines || e.defines_figures;
        auto it = std::find_if(values.begin(), values.end(), [&](const auto& v) { return v.first == e.value; });
        if (it == values.end()) values.push_back({e.value, {}}), it = values.end() - 1;
        it->second.push_back(row.name);
      }
    }
    if (!defines) continue;
    std::string detail;
    for (const auto& [value, names] : values) {
      std::string who;
      for (const auto& n : names) who += (who.empty() ? "" : ", ") + n;
      detail += fmt::format("{}{} ({})", detail.empty() ? "" : "; ", value, who);
    }
    out.problems.push_back(fmt::format("\"{}\" differs between rows: {}. Their figures are not comparable; evaluate "
                                       "every model with the same qad eval settings.",
                                       name, detail));
  }

  std::vector<Column> columns = {{"model", {}, false}, {"method", {}, false}};
  add_setting_columns(columns, settings, split.differing);
  const size_t first_metric = columns.size();
  for (const char* name : {"perplexity", "KL(teacher ‖ model)", "top-1 agreement", "task accuracy", "avg@k"}) {
    columns.push_back({name, {}, true});
  }
  for (const auto& row : rows) {
    const EvalResult& e = *row.eval;
    columns[0].cells.push_back(row.name);
    columns[1].cells.push_back(row.method);
    const std::vector<std::string> metrics = {num(e.perplexity), num(e.kl), num(e.agreement), num(e.task_accuracy),
                                              num(e.avg_at_k)};
    for (size_t i = 0; i < metrics.size(); ++i) columns[first_metric + i].cells.push_back(metrics[i]);
  }
  out.table = assemble(columns, rows.size());
  return out;
}

std::string report_markdown(const std::string& title, const ComparisonTable& summary,
                            const ComparisonTable& evaluation) {
  std::string md = "# " + title + "\n";
  auto section = [&](const char* heading, const ComparisonTable& t) {
    if (t.table.rows.empty()) return;
    md += fmt::format("\n## {}\n\n", heading);
    for (const auto& p : t.problems) md += "**Warning:** " + p + "\n\n";
    md += to_markdown(t.table);
    if (const std::string shared = t.shared_text(); !shared.empty()) md += "\n" + shared + "\n";
  };
  section("Training summary (last validation)", summary);
  section("Evaluation (qad eval)", evaluation);
  return md;
}

}  // namespace qad::report
