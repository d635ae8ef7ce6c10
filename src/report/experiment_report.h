// `qad report EXPERIMENT_DIR`: the page of a `qad experiment` grid, read from its summary.json. Per metric, each
// group's mean over seeds with its 95 % interval as an error bar; per-layer CKA per group with error bars; the
// group table (mean ± sample std, n) and the paired differences with their intervals and verdicts.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace qad::report {

// A directory that `qad experiment` summarised (summary.json beside grid.json).
bool is_experiment_dir(const std::filesystem::path& dir);

// The self-contained HTML page for a summary.json object. Throws qad::Error naming `source` when a field the page
// needs is missing or of the wrong type.
std::string render_experiment_report(const nlohmann::json& summary, const std::string& title,
                                     const std::string& source);

// Reads DIR/summary.json and writes the page to `out` atomically.
void write_experiment_report(const std::filesystem::path& dir, const std::filesystem::path& out,
                             const std::string& title);

}  // namespace qad::report
