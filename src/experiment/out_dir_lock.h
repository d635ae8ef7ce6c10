// One grid runner per output directory: two runners would start the same cell twice and delete each other's
// run directories. An flock on OUT/experiment.lock, which the kernel releases however the holder ends.
#pragma once
#include <filesystem>

namespace qad::experiment {

// Whether a runner holds OUT's lock now (false when there is no lock file).
bool runner_active(const std::filesystem::path& out);

class OutDirLock {
 public:
  // Takes the lock or throws qad::Error naming the directory and the holder's pid.
  explicit OutDirLock(const std::filesystem::path& out);
  ~OutDirLock();
  OutDirLock(const OutDirLock&) = delete;
  OutDirLock& operator=(const OutDirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace qad::experiment
