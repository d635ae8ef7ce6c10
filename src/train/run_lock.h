// One writer per run directory: `qad distill` holds RUN_DIR/run.lock (an flock, released by the kernel when the
// process ends however it ends) for as long as it runs. A second run into the same --out is refused with the
// holder's pid and host; a lock file left by a killed process is not held, so it is recognised as stale and
// taken over.
#pragma once
#include <filesystem>
#include <string>

namespace qad::train {

class RunLock {
 public:
  // Creates `run_dir` if needed and takes its lock, or throws qad::Error naming the holder. `command` is
  // recorded in the lock file for the message another run would print.
  RunLock(const std::filesystem::path& run_dir, const std::string& command);
  ~RunLock();  // removes the lock file and releases the lock
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  static constexpr const char* kFileName = "run.lock";

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace qad::train
