// check_output_writable (see output_check.h): a probe file is created and removed, which also catches what
// access(2) does not (a read-only mount as root, a full disk without free inodes).
#include "util/output_check.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "util/error.h"

namespace qad {
namespace fs = std::filesystem;

void check_output_writable(const fs::path& out, std::string_view flag) {
  std::error_code ec;
  fs::path dir = out.empty() ? fs::path(".") : out;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec)) {
    fail("{} {}: exists and is not a directory; give a directory path", flag, out.string());
  }
  while (!fs::exists(dir, ec)) {
    const auto parent = dir.has_parent_path() && dir.parent_path() != dir ? dir.parent_path() : fs::path(".");
    if (parent == dir) break;
    dir = parent;
  }
  QAD_CHECK(fs::is_directory(dir, ec), "{} {}: {} is not a directory; give a path inside a directory", flag,
            out.string(), dir.string());
  const fs::path probe = dir / fmt::format(".qad-write-test-{}", ::getpid());
  const int fd = ::open(probe.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    const char* fix = err == EROFS    ? "the file system is read-only; choose a directory on a writable disk"
                      : err == ENOSPC ? "the disk is full; free space or choose another disk"
                      : err == EACCES || err == EPERM
                          ? "no write permission; choose a directory you can write to or change its permissions"
                          : "choose another directory";
    fail("{} {}: cannot write in {} ({}); {}", flag, out.string(), dir.string(), std::strerror(err), fix);
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace qad
