// `qad experiment --config exp.yaml --out DIR`: a grid of methods × settings × seeds over one teacher and data,
// run as `qad distill` (+ `qad eval`) children of this binary, resumable, summarised with mean ± std per group
// and paired differences with confidence intervals (docs/experiments.md). The work is in src/experiment/.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "experiment/grid.h"
#include "experiment/runner.h"
#include "experiment/summary.h"
#include "experiment/summary_files.h"
#include "experiment/token_budget.h"
#include "util/error.h"

namespace qad::cli {
namespace {
namespace fs = std::filesystem;
namespace ex = qad::experiment;

struct ExperimentArgs {
  std::string config, out, gpus;
  int cells_per_gpu = 1;
  bool dry_run = false, summarize_only = false;
};

std::vector<std::string> parse_gpus(const std::string& list) {
  std::vector<std::string> gpus;
  size_t pos = 0;
  while (pos <= list.size() && !list.empty()) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    const std::string g = list.substr(pos, comma - pos);
    QAD_CHECK(!g.empty() && g.find_first_not_of("0123456789") == std::string::npos,
              "--gpus {}: expected GPU indices separated by commas, e.g. --gpus 0,1,2", list);
    QAD_CHECK(std::find(gpus.begin(), gpus.end(), g) == gpus.end(), "--gpus {}: GPU {} is listed twice", list, g);
    gpus.push_back(g);
    pos = comma + 1;
  }
  return gpus;
}

std::string command_text(const std::string& exe, const std::vector<std::string>& args) {
  std::string s = ex::shell_quote(exe);
  for (const auto& a : args) s.append(" ").append(ex::shell_quote(a));  // not " " + x: GCC 12 -Wrestrict
  return s;
}

void print_dry_run(const ex::Grid& g, const fs::path& out, const std::string& exe,
                   const std::vector<std::string>& gpus) {
  fmt::print("{}: {} cells = {} seed(s) × {} variant(s) × {} method(s)\n", g.name, g.cells.size(), g.seeds.size(),
             g.variants.size(), g.methods.size());
  for (size_t v = 0; v < g.variants.size(); ++v) {
    for (size_t m = 0; m < g.methods.size(); ++m) {
      ex::Cell probe;
      probe.method = m;
      probe.variant = v;
      fmt::print("  budget {}: {}\n", g.group_of(probe), ex::token_budget(g, m, v).describe());
    }
  }
  const std::string gpu = gpus.empty() ? "" : gpus.front();
  for (const auto& c : g.cells) {
    fmt::print("{}\n  {}\n", c.name, command_text(exe, ex::distill_command(g, c, out, false, gpu)));
    if (g.has_eval()) fmt::print("  {}\n", command_text(exe, ex::eval_command(g, c, out, gpu)));
  }
  for (const auto& cmp : g.comparisons) fmt::print("paired difference: {} - {} per seed\n", cmp.a, cmp.b);
}

void print_verdicts(const ex::Summary& s) {
  for (const auto& r : s.paired) {
    if (r.metric != "kl" && r.metric != "mean_cka" && r.metric != "eval.accuracy" && r.metric != "task_accuracy") {
      continue;
    }
    const auto& st = r.diff.stats;
    fmt::print("  {} - {}{} {}: {:+.5g}{} over {} seed(s): {}\n", r.a, r.b,
               r.variant.empty() ? "" : " (" + r.variant + ")", r.metric, st.mean,
               st.ci_low ? fmt::format(", 95% CI [{:.5g}, {:.5g}]", *st.ci_low, *st.ci_high) : "", st.n, r.verdict);
  }
}

void run_experiment(const ExperimentArgs& a) {
  const ex::Grid grid = ex::load_grid(a.config);
  for (const auto& w : grid.warnings) fmt::print(stderr, "qad experiment: warning: {}\n", w);
  const fs::path out(a.out);
  const std::vector<std::string> gpus = parse_gpus(a.gpus);
  std::error_code ec;
  const std::string exe = fs::read_symlink("/proc/self/exe", ec).string();
  const std::string qad = ec || exe.empty() ? std::string("/proc/self/exe") : exe;
  if (a.dry_run) return print_dry_run(grid, out, qad, gpus);

  ex::GridRunResult result;
  if (a.summarize_only) {
    QAD_CHECK(fs::is_directory(out / "cells", ec), "--out {}: no experiment here (no cells/ directory)", a.out);
  } else {
    ex::RunnerOptions options;
    options.qad_executable = qad;
    options.out = out;
    options.gpus = gpus;
    options.cells_per_gpu = a.cells_per_gpu;
    result = ex::run_grid(grid, options);
  }
  const ex::Summary summary = ex::summarize(grid, out);
  ex::write_summary_files(summary, out);
  fmt::print("qad experiment: {} of {} cells finished; wrote {}, summary.json, summary.csv\n",
             summary.count("finished"), summary.cells.size(), (out / "summary.md").string());
  print_verdicts(summary);
  if (result.stop_signal != 0) {
    fmt::print(stderr, "qad experiment: stopped by {}; run the same command again to continue (finished cells are "
               "kept, interrupted ones resume from their checkpoints)\n",
               result.stop_signal == 2 ? "SIGINT" : "SIGTERM");
    std::fflush(stdout);
    std::exit(128 + result.stop_signal);
  }
  std::vector<std::string> failed;
  for (const auto& c : summary.cells) {
    if (c.state == "failed") failed.push_back(c.name);
  }
  if (!failed.empty()) {
    std::string names;
    for (const auto& f : failed) names += (names.empty() ? "" : ", ") + f;
    fail("{} of {} cells failed ({}); each one's log is {}/cells/NAME/log.txt; run the same command again to retry "
         "them", failed.size(), summary.cells.size(), names, a.out);
  }
}

}  // namespace

void register_experiment(CLI::App& app) {
  auto a = std::make_shared<ExperimentArgs>();
  auto* cmd = app.add_subcommand("experiment", "Run a grid of methods × settings × seeds (resumable) and summarise "
                                               "it with mean ± std and paired differences");
  cmd->add_option("--config", a->config, "the grid file (docs/experiments.md)")->required();
  cmd->add_option("-o,--out", a->out, "the experiment directory: cells/NAME/{run,log.txt,eval.json}, summary.*")
      ->required();
  cmd->add_option("--gpus", a->gpus, "run one cell per GPU at once, e.g. 0,1,2 (CUDA_VISIBLE_DEVICES per cell); "
                                     "default: one cell at a time on the grid's device");
  cmd->add_option("--cells-per-gpu", a->cells_per_gpu, "run this many cells at once on each GPU of --gpus (or on "
                  "the grid's device): a small model leaves most of a large GPU idle")
      ->check(CLI::Range(1, 64));
  cmd->add_flag("--dry-run", a->dry_run, "print the cells and their exact command lines, run nothing");
  cmd->add_flag("--summarize-only", a->summarize_only, "write the summary from the cells on disk, run nothing");
  cmd->callback([a] { run_experiment(*a); });
}

QAD_REGISTER_COMMAND(750, register_experiment);

}  // namespace qad::cli
