// The trainer loop, torchtitan style: load → loop {step, log, validate, checkpoint} → export. Components live in
// their own files (config, data_source, student, step, optimizer, schedule, validate, checkpoint, metrics).
#pragma once
#include <filesystem>
#include <optional>

#include "train/config.h"
#include "train/validate.h"

namespace qad::train {

struct RunSummary {
  std::filesystem::path run_dir;
  int64_t steps = 0, tokens = 0;
  std::optional<ValidResult> final_valid;
  double train_seconds = 0;
  int stopped_by_signal = 0;           // SIGINT / SIGTERM stopped the run before run.steps (0: it finished)
  std::filesystem::path checkpoint;    // when stopped: the checkpoint to resume from (empty if none)
};

// Runs (or with resume, continues from RUN_DIR's latest checkpoint) the job `cfg` describes. A resumed run must
// have the same configuration as the one saved in RUN_DIR/run.json (the first difference is named).
// `command` (the command line) is recorded in the run directory's lock for a second run's message. SIGINT /
// SIGTERM stop the run at the next step boundary with a checkpoint (RunSummary::stopped_by_signal).
RunSummary run_training(const TrainConfig& cfg, bool resume, const std::string& command = "qad distill");

// The device cfg.run.device names ("auto": CUDA when available).
torch::Device resolve_device(const std::string& name);

}  // namespace qad::train
