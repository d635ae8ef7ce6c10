// RunDirectory (see run_directory.h).
#include "train/run_directory.h"

#include <fmt/format.h>

#include "util/error.h"
#include "util/output_check.h"
#include "util/remove_tree.h"
#include "util/stale_temporaries.h"

namespace qad::train {
namespace fs = std::filesystem;

RunDirectory::RunDirectory(const fs::path& dir, bool resume, const std::string& command) : dir_(dir) {
  std::error_code ec;
  existed_ = fs::exists(dir, ec);
  if (existed_) {
    QAD_CHECK(fs::is_directory(dir, ec), "--out {}: exists and is a file; give a directory", dir.string());
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      entries_before_.insert(it->path().filename().string());
    }
  }
  // What a qad run directory may hold; anything else means --out points at someone else's directory.
  if (!resume && !entries_before_.empty() && !entries_before_.count("run.json")) {
    bool foreign = false;
    for (const auto& n : entries_before_) {
      if (n != RunLock::kFileName && n != "data" && n != "checkpoints" && n[0] != '.') foreign = true;
    }
    QAD_CHECK(!foreign, "--out {}: the directory is not empty and holds no qad run (no run.json); choose a new or "
              "empty directory", dir.string());
  }
  check_output_writable(dir, "--out");
  lock_ = std::make_unique<RunLock>(dir, command);
  remove_stale_temporaries();
}

RunDirectory::~RunDirectory() {
  if (started_) return;
  std::error_code ec;
  if (!existed_) {
    lock_.reset();
    ::qad::remove_tree(dir_, ec);
    return;
  }
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const auto n = it->path().filename().string();
    if (!entries_before_.count(n) && n != RunLock::kFileName) {
      std::error_code rec;
      ::qad::remove_tree(it->path(), rec);
    }
  }
}

void RunDirectory::remove_stale_temporaries() const {
  for (const auto& sub : {fs::path(), fs::path("checkpoints"), fs::path("data"), fs::path("export")}) {
    for (const auto& p : ::qad::remove_stale_temporaries(sub.empty() ? dir_ : dir_ / sub)) {
      fmt::print(stderr, "qad: removed {}, a temporary a killed run left\n", p.string());
    }
  }
}

}  // namespace qad::train
