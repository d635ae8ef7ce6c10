// Runs a grid's cells as child processes of a qad executable: one at a time, or one per GPU. Each cell's
// state is on disk (cell_state.h), so a grid that was killed resumes where it stopped; a finished cell is
// never run again, a failed one is recorded and the grid goes on. docs/experiments.md.
#pragma once
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "experiment/grid.h"
#include "util/shell_quote.h"

namespace qad::experiment {

using qad::shell_quote;

struct RunnerOptions {
  std::string qad_executable;  // the cells run `qad_executable distill ...` and `... eval ...`
  std::filesystem::path out;   // OUT: cells/NAME/{run, log.txt, eval.json, status.json}, grid.json
  std::vector<std::string> gpus;  // empty: one cell at a time; else one cell per entry, CUDA_VISIBLE_DEVICES=entry
  int cells_per_gpu = 1;          // cells at once on each entry of gpus (or on the grid's device when gpus is empty):
                                  // small models leave most of a large GPU idle
  double poll_seconds = 0.05;
  std::FILE* messages = stdout;  // progress lines
};

enum class CellOutcome {
  kNotRun,           // still to do: the grid was stopped first
  kAlreadyFinished,  // finished before this run started
  kFinished,
  kFailed,       // a child failed on its own; status.json says how
  kInterrupted,  // stopped by a signal the runner forwarded; the next run continues it
};

struct GridRunResult {
  std::vector<CellOutcome> outcomes;  // one per grid cell, in the grid's order
  int stop_signal = 0;                // SIGINT / SIGTERM that stopped the grid, 0 when it ran to the end
  size_t count(CellOutcome o) const;
};

GridRunResult run_grid(const Grid& grid, const RunnerOptions& options);

// The arguments (after the executable) that train a cell; `gpu` non-empty: on that GPU.
std::vector<std::string> distill_command(const Grid& grid, const Cell& cell, const std::filesystem::path& out,
                                         bool resume, const std::string& gpu);

// The arguments that evaluate a trained cell; the model is its NVFP4 export (else its HF export, else the run
// directory itself, which qad eval loads from its latest checkpoint).
std::vector<std::string> eval_command(const Grid& grid, const Cell& cell, const std::filesystem::path& out,
                                      const std::string& gpu);


}  // namespace qad::experiment
