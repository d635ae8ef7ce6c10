// An experiment grid: methods × settings × seeds over one teacher and one data set, read from exp.yaml and
// expanded into cells, each with the exact `qad distill` arguments that run it. Format: docs/experiments.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace qad::experiment {

// One `qad distill --set key=value`: key is "section.key", value the text passed after '='.
struct Setting {
  std::string key, value;
};

// One entry of `methods:`: a plain method ("qad") or a named one with its own recipe and settings.
struct MethodEntry {
  std::string name;    // the cell names' first part and the summary's label
  std::string method;  // ptq | qat | qad | cka-qad | pretrain
  std::string recipe;  // --config; empty = the base recipe
  std::vector<Setting> sets;
};

// One point of `vary:`: its settings and its name in cell names ("" when nothing varies).
struct Variant {
  std::string name;
  std::vector<Setting> sets;
};

// A paired difference the summary reports: a − b per seed, for each variant.
struct Comparison {
  std::string a, b;  // MethodEntry names
};

struct Cell {
  std::string name;  // "cka-qad__loss.cka=0.1__seed1": a directory name, unique in the grid
  size_t method = 0, variant = 0;
  uint64_t seed = 0;
  std::vector<std::string> distill_args;  // "distill", "--method", ... (without --out, which the runner adds)
};

struct Grid {
  std::filesystem::path file;
  std::string name;  // `name:`, else the file's stem
  std::string teacher, data, valid_data, tasks, recipe;
  std::vector<Setting> base;
  std::vector<MethodEntry> methods;
  std::vector<Variant> variants;  // at least one
  std::vector<std::string> varied_keys;  // every key some variant sets
  std::vector<uint64_t> seeds;
  std::vector<std::string> eval_args;  // extra `qad eval` arguments
  std::vector<Comparison> comparisons;
  std::vector<Cell> cells;  // seed-major: every method and variant of the first seed, then the next seed
  std::vector<std::string> warnings;

  // Whether each cell is evaluated with `qad eval` after training (`tasks:` or `eval:` given).
  bool has_eval() const { return !tasks.empty() || !eval_args.empty(); }
  // Cells that differ only by seed share a group: "method" or "method__variant".
  std::string group_of(const Cell& c) const;
};

// Reads and expands `file`; errors name the file and the key. Relative paths in the file stay relative to
// the working directory, as they would on a `qad distill` command line.
Grid load_grid(const std::filesystem::path& file);

// The same from YAML text; `label` stands for the file in messages.
Grid parse_grid(const std::string& yaml_text, const std::string& label);

// Keeps [A-Za-z0-9._=+,-] and turns everything else into '_', so that a name is a safe directory name.
std::string safe_name(const std::string& s);

}  // namespace qad::experiment
