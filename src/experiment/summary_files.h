// The summary as files in OUT, each written atomically: summary.json (everything, full precision),
// summary.md (tables to read: mean ± std per group, per-layer CKA, paired differences with 95 % intervals
// and verdicts, failed and unfinished cells) and summary.csv (one row per cell, group and paired metric).
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

#include "experiment/summary.h"

namespace qad::experiment {

nlohmann::json summary_json(const Summary& s);
std::string summary_markdown(const Summary& s);
std::string summary_csv(const Summary& s);

void write_summary_files(const Summary& s, const std::filesystem::path& out);

}  // namespace qad::experiment
