// The grid's summary: per group of cells that differ only by seed, mean ± std and a 95 % interval of every
// metric; per comparison (a − b), the paired difference over seeds with its interval and verdict; and which
// cells failed or are still to run. Built from the files on disk, so it can be made at any time.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "experiment/cell_metrics.h"
#include "experiment/grid.h"
#include "experiment/stats.h"

namespace qad::experiment {

struct CellRecord {
  std::string name, group;
  uint64_t seed = 0;
  std::string state;  // finished | failed | interrupted | running | not run
  MetricValues metrics;  // finished cells only
  nlohmann::json status;  // status.json, when there is one (a failure's exit and log tail)
};

struct GroupSummary {
  std::string name, method, variant;
  size_t cells = 0;             // in the grid
  std::vector<uint64_t> seeds;  // of the finished cells
  std::map<std::string, Stats> metrics;
  std::map<std::string, std::map<uint64_t, double>> values;  // metric → seed → value
};

struct PairedRow {
  std::string a, b, variant, metric;
  PairedDifference diff;
  std::string verdict;  // verdict_text, with "(better)" / "(worse)" for metrics with a direction
};

struct Summary {
  std::string experiment;
  std::vector<CellRecord> cells;
  std::vector<GroupSummary> groups;
  std::vector<PairedRow> paired;
  std::vector<std::string> metrics;  // every metric seen, in reading order
  size_t count(const std::string& state) const;
};

Summary summarize(const Grid& grid, const std::filesystem::path& out);

}  // namespace qad::experiment
