// The output directory's lock (see out_dir_lock.h).
#include "experiment/out_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "util/error.h"

namespace qad::experiment {

OutDirLock::OutDirLock(const std::filesystem::path& out) {
  const auto path = out / "experiment.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);  // CLOEXEC: the cells do not hold it
  QAD_CHECK(fd_ >= 0, "{}: cannot open the lock file: {}", path.string(), std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[64] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    fail("{}: another qad experiment (pid {}) is running in this directory; wait for it or stop it first",
         out.string(), n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("unknown"));
  }
  const std::string pid = std::to_string(::getpid());
  (void)!::ftruncate(fd_, 0);
  (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
}

bool runner_active(const std::filesystem::path& out) {
  const int fd = ::open((out / "experiment.lock").c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0;
  ::close(fd);  // releases it again when this took it
  return held;
}

OutDirLock::~OutDirLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace qad::experiment
