// A cell's state lives on disk, in OUT/cells/NAME/, so that a killed grid resumes from what its files say:
// finished = the run wrote final_metrics.json (and eval.json when the grid evaluates); a run with a checkpoint
// is resumed with --resume; anything else starts again from an empty run directory.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace qad::experiment {

struct CellPaths {
  std::filesystem::path dir;          // OUT/cells/NAME
  std::filesystem::path run_dir;      // .../run: qad distill --out
  std::filesystem::path log;          // .../log.txt: stdout and stderr of every attempt, appended
  std::filesystem::path eval_json;    // .../eval.json: qad eval --json's object
  std::filesystem::path status_json;  // .../status.json: the last attempt (state, exit code, log tail)
};

CellPaths cell_paths(const std::filesystem::path& out, const std::string& cell_name);

enum class CellProgress {
  kFinished,   // nothing to do
  kNeedsEval,  // trained; qad eval still to run
  kResume,     // a checkpoint: qad distill --resume
  kFresh,      // start (again) from an empty run directory
};

CellProgress inspect_cell(const CellPaths& paths, bool needs_eval);

const char* progress_name(CellProgress p);  // "finished", "needs eval", "resume", "fresh"

// status.json, written atomically: {"name", "state", "phase", "exit_code", "exit", "log_tail", "seconds", ...}.
void write_status(const CellPaths& paths, const nlohmann::json& status);
std::optional<nlohmann::json> read_status(const CellPaths& paths);

// The last `n` lines of a text file (fewer when it is shorter; none when it does not exist).
std::vector<std::string> last_lines(const std::filesystem::path& file, size_t n);

}  // namespace qad::experiment
