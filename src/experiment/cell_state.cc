// Cell state on disk (see cell_state.h).
#include "experiment/cell_state.h"

#include <algorithm>
#include <fstream>
#include <iterator>

#include "util/atomic_file.h"

namespace qad::experiment {
namespace fs = std::filesystem;

CellPaths cell_paths(const fs::path& out, const std::string& cell_name) {
  CellPaths p;
  p.dir = out / "cells" / cell_name;
  p.run_dir = p.dir / "run";
  p.log = p.dir / "log.txt";
  p.eval_json = p.dir / "eval.json";
  p.status_json = p.dir / "status.json";
  return p;
}

CellProgress inspect_cell(const CellPaths& paths, bool needs_eval) {
  std::error_code ec;
  if (fs::is_regular_file(paths.run_dir / "final_metrics.json", ec)) {
    return !needs_eval || fs::is_regular_file(paths.eval_json, ec) ? CellProgress::kFinished
                                                                   : CellProgress::kNeedsEval;
  }
  // qad distill writes `latest` only after the checkpoint it names is complete (docs/train.md).
  const fs::path latest = paths.run_dir / "checkpoints" / "latest";
  if (fs::is_regular_file(latest, ec)) {
    std::ifstream in(latest);
    std::string name;
    std::getline(in, name);
    if (!name.empty() && fs::is_directory(paths.run_dir / "checkpoints" / name, ec)) return CellProgress::kResume;
  }
  return CellProgress::kFresh;
}

const char* progress_name(CellProgress p) {
  switch (p) {
    case CellProgress::kFinished: return "finished";
    case CellProgress::kNeedsEval: return "needs eval";
    case CellProgress::kResume: return "resume";
    case CellProgress::kFresh: return "fresh";
  }
  return "?";
}

void write_status(const CellPaths& paths, const nlohmann::json& status) {
  write_file_atomic(paths.status_json, status.dump(2) + "\n");
}

std::optional<nlohmann::json> read_status(const CellPaths& paths) {
  std::error_code ec;
  if (!fs::is_regular_file(paths.status_json, ec)) return std::nullopt;
  auto j = nlohmann::json::parse(read_file(paths.status_json), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

std::vector<std::string> last_lines(const fs::path& file, size_t n) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return {};
  // Only the file's end: a log of a long run can be large.
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = std::max<std::streamoff>(0, size - 64 * 1024);
  in.seekg(start);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // A progress bar redrawn with '\r' keeps only its last state.
    const auto cr = line.rfind('\r');
    if (cr != std::string::npos) line = line.substr(cr + 1);
    lines.push_back(std::move(line));
    pos = nl + 1;
  }
  if (start > 0 && !lines.empty()) lines.erase(lines.begin());  // a cut first line
  if (lines.size() > n) lines.erase(lines.begin(), lines.end() - static_cast<std::ptrdiff_t>(n));
  return lines;
}

}  // namespace qad::experiment
