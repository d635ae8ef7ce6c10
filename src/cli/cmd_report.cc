// `qad report ENTRY... --out report.html [--teacher DIR_OR_JSON] [--smooth W] [--heatmap-scale own|shared]
// [--csv F] [--eval-csv F] [--markdown F] [--title T]`: one self-contained HTML file comparing training runs,
// PTQ and NVFP4 exports against the teacher, and the summary tables as CSV / Markdown. See docs/report.md.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "cli/commands.h"
#include "report/experiment_report.h"
#include "report/html_report.h"
#include "report/run_reader.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::cli {
namespace {
namespace fs = std::filesystem;

struct ReportCliOptions {
  std::vector<std::string> run_dirs;
  std::string out = "report.html";
  std::string title = "qad training report";
  std::string teacher;
  double smooth = 0;
  std::string heatmap_scale = "own";
  std::string csv, eval_csv, markdown;
};

// Every output's directory is checked before anything is written, so that a typo costs no half-written set.
void check_output_dir(const std::string& file, const char* flag) {
  if (file.empty()) return;
  const fs::path parent = fs::path(file).parent_path();
  std::error_code ec;
  QAD_CHECK(parent.empty() || fs::is_directory(parent, ec), "{} {}: the directory {} does not exist", flag, file,
            parent.string());
}

// --teacher: an eval.json, or a directory holding one.
report::EvalResult read_teacher(const std::string& arg, std::vector<std::string>& warnings) {
  fs::path file(arg);
  if (fs::is_directory(file)) {
    file /= "eval.json";
    QAD_CHECK(fs::exists(file), "--teacher {}: no eval.json in it; write one with qad eval --model {} --data ... "
              "--tasks ... --out {}, or give the JSON file", arg, arg, file.string());
  }
  QAD_CHECK(fs::exists(file), "--teacher {}: no such file or directory; give the teacher's eval.json (qad eval "
            "--model TEACHER ... --out teacher_eval.json) or a directory holding one", arg);
  return report::read_eval_json(file, warnings);
}

void run_report(const ReportCliOptions& o) {
  QAD_CHECK(o.heatmap_scale == "own" || o.heatmap_scale == "shared", "--heatmap-scale must be own or shared, got '{}'",
            o.heatmap_scale);
  QAD_CHECK(o.smooth >= 0 && o.smooth < 1, "--smooth {}: the EMA weight must be in [0, 1) (0 = off, 0.9 = strong)",
            o.smooth);
  check_output_dir(o.out, "--out");
  check_output_dir(o.csv, "--csv");
  check_output_dir(o.eval_csv, "--eval-csv");
  check_output_dir(o.markdown, "--markdown");
  // A `qad experiment` directory gets its own page: groups over seeds with error bars.
  const auto experiments = std::count_if(o.run_dirs.begin(), o.run_dirs.end(),
                                         [](const std::string& d) { return report::is_experiment_dir(d); });
  if (experiments > 0) {
    QAD_CHECK(o.run_dirs.size() == 1, "qad report: {} is a qad experiment directory: give it alone (its cells' runs "
              "are in its cells/*/run if you want them side by side)", o.run_dirs.front());
    QAD_CHECK(o.teacher.empty() && o.csv.empty() && o.eval_csv.empty() && o.markdown.empty(),
              "qad report: --teacher / --csv / --eval-csv / --markdown apply to runs; an experiment has its own "
              "summary.csv and summary.md in {}", o.run_dirs.front());
    report::write_experiment_report(o.run_dirs.front(), o.out, o.title);
    fmt::print("wrote {} (experiment {}, {:.0f} KB)\n", o.out, o.run_dirs.front(), fs::file_size(o.out) / 1024.0);
    return;
  }
  std::vector<report::RunData> runs;
  for (const auto& dir : o.run_dirs) {
    runs.push_back(report::read_run(dir));
    for (const auto& w : runs.back().warnings) std::fprintf(stderr, "qad report: warning: %s\n", w.c_str());
  }
  std::optional<report::EvalResult> teacher;
  if (!o.teacher.empty()) {
    std::vector<std::string> warnings;
    teacher = read_teacher(o.teacher, warnings);
    for (const auto& w : warnings) std::fprintf(stderr, "qad report: warning: %s\n", w.c_str());
  }
  report::ReportOptions options;
  options.title = o.title;
  options.smooth = o.smooth;
  options.heatmap_scale = o.heatmap_scale == "own" ? report::HeatmapScale::kOwn : report::HeatmapScale::kShared;
  const report::EvalResult* teacher_ptr = teacher ? &*teacher : nullptr;
  report::write_html_report(o.out, runs, options, teacher_ptr);
  const auto summary = report::summary_table(runs);
  const auto evaluation = report::evaluation_table(runs, teacher_ptr);
  for (const auto& p : evaluation.problems) std::fprintf(stderr, "qad report: warning: evaluation: %s\n", p.c_str());
  if (!o.csv.empty()) write_file_atomic(o.csv, report::to_csv(summary.table));
  if (!o.eval_csv.empty()) write_file_atomic(o.eval_csv, report::to_csv(evaluation.table));
  if (!o.markdown.empty()) write_file_atomic(o.markdown, report::report_markdown(o.title, summary, evaluation));
  size_t train = 0, valid = 0, evaluated = teacher ? 1 : 0;
  for (const auto& r : runs) train += r.train.size(), valid += r.valid.size(), evaluated += r.eval ? 1 : 0;
  fmt::print("wrote {} ({} entr{}, {} training and {} validation records, {} evaluation{}, {:.0f} KB)\n", o.out,
             runs.size(), runs.size() == 1 ? "y" : "ies", train, valid, evaluated, evaluated == 1 ? "" : "s",
             fs::file_size(o.out) / 1024.0);
}

}  // namespace

void register_report(CLI::App& app) {
  auto opts = std::make_shared<ReportCliOptions>();
  auto* cmd = app.add_subcommand("report", "Compare runs, PTQ and exports against the teacher in one HTML file");
  cmd->footer("Examples:\n  qad report runs/ptq runs/qad runs/cka --out report.html --title \"QAD vs CKA-QAD\"");  // each one is run by tests/usage
  cmd->add_option("run_dirs", opts->run_dirs, "run directories (metrics.jsonl, run.json, final_metrics.json, "
                  "eval.json) and NVFP4 export / model directories with an eval.json; or one qad experiment "
                  "directory (its groups over seeds with error bars)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("-o,--out", opts->out, "the HTML file to write")->capture_default_str();
  cmd->add_option("--teacher", opts->teacher, "the teacher's eval.json (qad eval --model TEACHER ... --out FILE), "
                  "or a directory holding eval.json: the evaluation table's first row");
  cmd->add_option("--smooth", opts->smooth, "EMA weight for per-step training curves, e.g. 0.9 (0 = raw values)")
      ->capture_default_str();
  cmd->add_option("--heatmap-scale", opts->heatmap_scale, "per-layer CKA heatmaps: own (each its run's range) or "
                  "shared (one range for all)")->capture_default_str();
  cmd->add_option("--csv", opts->csv, "also write the training summary table as CSV");
  cmd->add_option("--eval-csv", opts->eval_csv, "also write the evaluation table (eval.json figures) as CSV");
  cmd->add_option("--markdown", opts->markdown, "also write both tables and their settings as Markdown");
  cmd->add_option("--title", opts->title, "the report's title")->capture_default_str();
  cmd->callback([opts] { run_report(*opts); });
}

QAD_REGISTER_COMMAND(800, register_report);

}  // namespace qad::cli
