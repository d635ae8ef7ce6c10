// `qad report RUN_DIR... --out report.html [--title T]`: one self-contained HTML file comparing training
// runs (loss curves, validation KL and CKA, per-layer CKA, heatmaps, final metrics). See docs/report.md.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "report/html_report.h"
#include "report/run_reader.h"
#include "util/error.h"

namespace qad::cli {
namespace {

struct ReportCliOptions {
  std::vector<std::string> run_dirs;
  std::string out = "report.html";
  std::string title = "qad training report";
};

void run_report(const ReportCliOptions& o) {
  std::vector<report::RunData> runs;
  for (const auto& dir : o.run_dirs) {
    runs.push_back(report::read_run(dir));
    for (const auto& w : runs.back().warnings) std::fprintf(stderr, "qad report: warning: %s\n", w.c_str());
  }
  report::ReportOptions options;
  options.title = o.title;
  const std::filesystem::path out(o.out);
  if (!out.parent_path().empty()) {
    std::error_code ec;
    QAD_CHECK(std::filesystem::is_directory(out.parent_path(), ec), "--out {}: the directory {} does not exist",
              o.out, out.parent_path().string());
  }
  report::write_html_report(out, runs, options);
  size_t train = 0, valid = 0;
  for (const auto& r : runs) train += r.train.size(), valid += r.valid.size();
  fmt::print("wrote {} ({} run{}, {} training and {} validation records, {:.0f} KB)\n", o.out, runs.size(),
             runs.size() == 1 ? "" : "s", train, valid, std::filesystem::file_size(out) / 1024.0);
}

}  // namespace

void register_report(CLI::App& app) {
  auto opts = std::make_shared<ReportCliOptions>();
  auto* cmd = app.add_subcommand("report", "Compare training runs in one self-contained HTML file");
  cmd->footer("Examples:\n  qad report runs/ptq runs/qad runs/cka --out report.html --title \"QAD vs CKA-QAD\"");  // each one is run by tests/usage
  cmd->add_option("run_dirs", opts->run_dirs, "run directories (metrics.jsonl, run.json, final_metrics.json)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("-o,--out", opts->out, "the HTML file to write")->capture_default_str();
  cmd->add_option("--title", opts->title, "the report's title")->capture_default_str();
  cmd->callback([opts] { run_report(*opts); });
}

QAD_REGISTER_COMMAND(800, register_report);

}  // namespace qad::cli
