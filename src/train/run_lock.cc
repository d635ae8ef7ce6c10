// RunLock (see run_lock.h). flock rather than an O_EXCL file: a SIGKILLed holder cannot leave a lock that
// blocks the next run, and no pid check across hosts is needed to tell a stale lock from a live one.
#include "train/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace qad::train {
namespace fs = std::filesystem;
namespace {

std::string read_fd(int fd) {
  std::string s;
  char buf[4096];
  ::lseek(fd, 0, SEEK_SET);
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) s.append(buf, static_cast<size_t>(n));
  return s;
}

std::string hostname() {
  char h[256] = {0};
  if (::gethostname(h, sizeof(h) - 1) != 0) return "unknown host";
  return h;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

// "pid 1234 on host gpu-7 since 2026-12-02T07:00:00Z" from a lock file's JSON (or what is known of it).
std::string describe_holder(const std::string& content) {
  auto j = nlohmann::json::parse(content, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("pid")) return "a process that has not yet recorded itself";
  return fmt::format("pid {} on host {} since {}", j.value("pid", 0L), j.value("host", std::string("?")),
                     j.value("started", std::string("?")));
}

}  // namespace

RunLock::RunLock(const fs::path& run_dir, const std::string& command) : path_(run_dir / kFileName) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  QAD_CHECK(!ec, "--out {}: cannot create the run directory ({}); choose a writable location", run_dir.string(),
            ec.message());
  for (int attempt = 0; attempt < 10; ++attempt) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    QAD_CHECK(fd >= 0, "--out {}: cannot create {} ({}); choose a writable location", run_dir.string(),
              path_.string(), std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string holder = read_fd(fd);
      ::close(fd);
      if (err == EWOULDBLOCK) {
        fail("{} is in use by another qad distill ({}); wait for it to finish or stop it, or choose another --out",
             run_dir.string(), describe_holder(holder));
      }
      // File systems without flock (some network mounts): go on unprotected rather than refuse to run.
      fmt::print(stderr, "qad: warning: cannot lock {} ({}); make sure no other run writes to {}\n", path_.string(),
                 std::strerror(err), run_dir.string());
      return;
    }
    // The previous holder may have removed the file between our open and flock: then we locked an orphan.
    struct stat by_fd {}, by_path {};
    if (::fstat(fd, &by_fd) != 0 || ::stat(path_.c_str(), &by_path) != 0 || by_fd.st_ino != by_path.st_ino ||
        by_fd.st_dev != by_path.st_dev) {
      ::close(fd);
      continue;
    }
    const std::string previous = read_fd(fd);
    if (!previous.empty()) {
      fmt::print(stderr, "qad: note: {} held a stale lock of {}, which has ended; taking it over\n", run_dir.string(),
                 describe_holder(previous));
    }
    const std::string record = nlohmann::json{{"pid", static_cast<long>(::getpid())}, {"host", hostname()},
                                              {"started", now_utc()}, {"command", command}}.dump() + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, record.data(), record.size(), 0) != static_cast<ssize_t>(record.size())) {
      const int err = errno;
      ::close(fd);
      fail("--out {}: cannot write {} ({}); free space or choose another location", run_dir.string(), path_.string(),
           std::strerror(err));
    }
    fd_ = fd;
    return;
  }
  fail("{}: could not take the run lock (it kept changing hands); is another qad distill starting there?",
       run_dir.string());
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // before releasing: whoever opens the path next creates a fresh file
  ::close(fd_);
}

}  // namespace qad::train
