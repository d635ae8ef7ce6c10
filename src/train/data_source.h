// Training data for a run: a prepared token dataset directory is used as is; a .jsonl / .txt file (optionally
// .xz / .zst) is prepared on the fly into RUN_DIR/data/<label> with the teacher's tokenizer (once: a resumed run
// reuses it). Also builds the train and validation loaders from the configuration.
#pragma once
#include <filesystem>
#include <memory>
#include <string>

#include "data/loader.h"
#include "train/config.h"

namespace qad::train {

std::filesystem::path resolve_dataset(const std::string& path, const std::filesystem::path& tokenizer_dir,
                                      const std::filesystem::path& run_dir, const std::string& label,
                                      double valid_fraction, const std::string& doc_end = "eos",
                                      const std::string& bos = "auto");

struct Loaders {
  std::unique_ptr<data::Loader> train;
  std::unique_ptr<data::Loader> valid;  // null when there is no held-out data
  std::unique_ptr<data::Loader> calib;  // the train split with another seed (PTQ calibration)
};

// The teacher's tokenizer (when its directory has one) must have encoded the data: checked by fingerprint.
// valid_batch_rows: rows per validation batch (0: batch_size x world_size, the global batch of one micro-batch).
Loaders make_loaders(const TrainConfig& cfg, int64_t valid_batch_rows = 0);

}  // namespace qad::train
