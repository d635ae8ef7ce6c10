// Claiming a run directory (--out) for one `qad distill`: refuse a directory that holds something else, take
// its lock (run_lock.h), remove temporaries that killed runs left, and, when the start fails before training
// began, remove what this start created (so that a failed start leaves neither run.json nor an empty --out).
#pragma once
#include <filesystem>
#include <memory>
#include <set>
#include <string>

#include "train/run_lock.h"

namespace qad::train {

class RunDirectory {
 public:
  // Throws qad::Error when `dir` cannot be written, is in use, or (without resume) is a non-empty directory
  // that is not a qad run.
  RunDirectory(const std::filesystem::path& dir, bool resume, const std::string& command);
  ~RunDirectory();  // before started(): removes what was created since construction
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  // Setup succeeded: from now on everything stays (checkpoints of a run that fails later are its value).
  void started() { started_ = true; }

  // Removes ".<name>.tmp-<pid>-<n>" entries of ended processes in the directory, checkpoints/, data/ and
  // export/; says what it removed.
  void remove_stale_temporaries() const;

 private:
  std::filesystem::path dir_;
  bool existed_ = false, started_ = false;
  std::set<std::string> entries_before_;
  std::unique_ptr<RunLock> lock_;
};

}  // namespace qad::train
