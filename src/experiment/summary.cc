// Grouping cells and pairing them by seed (see summary.h).
#include "experiment/summary.h"

#include <fmt/format.h>

#include <set>

#include "experiment/out_dir_lock.h"

namespace qad::experiment {
namespace fs = std::filesystem;
namespace {

std::string cell_state(const Grid& grid, const CellPaths& paths, const nlohmann::json& status, bool runner_live) {
  if (inspect_cell(paths, grid.has_eval()) == CellProgress::kFinished) return "finished";
  const std::string s = status.value("state", "");
  // "running" with no runner holding the lock: the runner was killed while the cell ran.
  if (s == "running") return runner_live ? "running" : "interrupted";
  if (s == "failed" || s == "interrupted") return s;
  return "not run";
}

// The per-layer CKA metrics ("cka.<layer>") a group's cells reported.
std::set<std::string> cka_layers(const GroupSummary& g) {
  std::set<std::string> out;
  for (const auto& [m, v] : g.values) {
    if (m.rfind("cka.", 0) == 0) out.insert(m);
  }
  return out;
}

std::string with_direction(const std::string& verdict, Verdict v, int direction) {
  if (direction == 0 || (v != Verdict::kGreater && v != Verdict::kLess)) return verdict;
  const bool a_higher = v == Verdict::kGreater;
  return verdict + ((a_higher == (direction > 0)) ? " (better)" : " (worse)");
}

}  // namespace

size_t Summary::count(const std::string& state) const {
  size_t n = 0;
  for (const auto& c : cells) n += c.state == state;
  return n;
}

Summary summarize(const Grid& grid, const fs::path& out) {
  Summary s;
  s.experiment = grid.name;
  std::map<std::string, size_t> group_index;
  std::set<std::string> metric_names;
  const bool runner_live = runner_active(out);
  for (const auto& c : grid.cells) {
    const auto paths = cell_paths(out, c.name);
    CellRecord r;
    r.name = c.name;
    r.group = grid.group_of(c);
    r.seed = c.seed;
    r.status = read_status(paths).value_or(nlohmann::json::object());
    r.state = cell_state(grid, paths, r.status, runner_live);
    if (r.state == "finished") r.metrics = read_cell_metrics(paths);

    auto [it, fresh] = group_index.emplace(r.group, s.groups.size());
    if (fresh) {
      GroupSummary g;
      g.name = r.group;
      g.method = grid.methods[c.method].name;
      g.variant = grid.variants[c.variant].name;
      s.groups.push_back(std::move(g));
    }
    GroupSummary& g = s.groups[it->second];
    ++g.cells;
    if (r.state == "finished") {
      g.seeds.push_back(c.seed);
      for (const auto& [m, v] : r.metrics) {
        g.values[m][c.seed] = v;
        metric_names.insert(m);
      }
    }
    s.cells.push_back(std::move(r));
  }
  s.metrics = order_metrics({metric_names.begin(), metric_names.end()});
  for (auto& g : s.groups) {
    for (const auto& [m, by_seed] : g.values) {
      std::vector<double> xs;
      for (const auto& [seed, v] : by_seed) xs.push_back(v);
      g.metrics[m] = describe(xs);
    }
  }
  for (const auto& cmp : grid.comparisons) {
    for (const auto& variant : grid.variants) {
      Cell probe_a, probe_b;
      for (size_t i = 0; i < grid.methods.size(); ++i) {
        if (grid.methods[i].name == cmp.a) probe_a.method = i;
        if (grid.methods[i].name == cmp.b) probe_b.method = i;
      }
      probe_a.variant = probe_b.variant = static_cast<size_t>(&variant - grid.variants.data());
      const auto ga = group_index.find(grid.group_of(probe_a));
      const auto gb = group_index.find(grid.group_of(probe_b));
      if (ga == group_index.end() || gb == group_index.end()) continue;
      const GroupSummary& a = s.groups[ga->second];
      const GroupSummary& b = s.groups[gb->second];
      for (const auto& m : s.metrics) {
        if (m == "steps" || m == "tokens") continue;  // settings, not outcomes
        const auto va = a.values.find(m), vb = b.values.find(m);
        if (va == a.values.end() || vb == b.values.end()) continue;
        PairedRow row;
        row.a = cmp.a;
        row.b = cmp.b;
        row.variant = variant.name;
        row.metric = m;
        row.diff = paired_difference(va->second, vb->second);
        if (row.diff.seeds.empty()) continue;
        row.verdict = with_direction(verdict_text(row.diff.verdict, cmp.a, cmp.b), row.diff.verdict,
                                     metric_direction(m));
        // A mean over other layers is another metric (runs from before validation measured every decoder layer
        // averaged the CKA term's layers only): no verdict on it.
        if (m == "mean_cka" && cka_layers(a) != cka_layers(b)) {
          row.verdict = fmt::format("not comparable: mean over {} layer(s) vs {}", cka_layers(a).size(),
                                    cka_layers(b).size());
        }
        s.paired.push_back(std::move(row));
      }
    }
  }
  return s;
}

}  // namespace qad::experiment
