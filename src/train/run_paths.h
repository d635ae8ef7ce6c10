// Path-valued settings of a run (teacher, data, student) as a resumed run recognises them: by canonical path,
// and where the spelling or location changed (./runB vs runB, another working directory, a moved run or data
// directory), by content identity. run.json records both under "paths".
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "train/config.h"

namespace qad::train {

// {"data.path": {"given": ..., "canonical": ..., "identity": ...}, ...} for every non-empty path setting.
nlohmann::json describe_paths(const TrainConfig& cfg);

// A stable summary of what `path` holds: a file's size and a hash of its first and last MiB; a directory's
// regular files (relative name, size, hash of the first 64 KiB), recursively. "missing" when it does not exist.
std::string content_identity(const std::filesystem::path& path);

// Before a resumed run compares its configuration with the saved one: sets every path setting of
// `saved_config` to this run's spelling where both name the same thing (same canonical path, or the same
// content identity as `saved_paths` recorded), and always for run.out (the directory being resumed is the run,
// wherever it now lies). Settings that name different things are left different, so that the comparison
// reports them.
void reconcile_paths(const TrainConfig& cfg, nlohmann::json& saved_config, const nlohmann::json& saved_paths);

}  // namespace qad::train
