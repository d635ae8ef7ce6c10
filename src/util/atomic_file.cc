#include "util/remove_tree.h"
#include "util/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "util/error.h"

namespace qad {
namespace fs = std::filesystem;

fs::path temporary_sibling(const fs::path& path) {
  static std::atomic<unsigned> counter{0};
  fs::path parent = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  return parent / fmt::format(".{}.tmp-{}-{}", path.filename().string(), ::getpid(), counter++);
}

namespace {

void fsync_path(const fs::path& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return;  // best effort: some filesystems refuse to open directories
  ::fsync(fd);
  ::close(fd);
}

void fsync_tree(const fs::path& dir) {
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) fsync_path(entry.path(), false);
  }
  fsync_path(dir, true);
}

}  // namespace

void write_file_atomic(const fs::path& path, const std::function<void(const fs::path&)>& fill) {
  fs::path tmp = temporary_sibling(path);
  try {
    fill(tmp);
    fsync_path(tmp, false);
    std::error_code ec;
    fs::rename(tmp, path, ec);
    QAD_CHECK(!ec, "cannot rename {} to {}: {}", tmp.string(), path.string(), ec.message());
    fsync_path(path.parent_path().empty() ? fs::path(".") : path.parent_path(), true);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

void write_file_atomic(const fs::path& path, std::string_view bytes) {
  write_file_atomic(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    QAD_CHECK(out.good(), "cannot create {}: {}", tmp.string(), std::strerror(errno));
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    QAD_CHECK(out.good(), "cannot write {} ({} bytes): {}; is the disk full?", path.string(), bytes.size(),
              std::strerror(errno));
  });
}

void write_directory_atomic(const fs::path& dir, const std::function<void(const fs::path&)>& fill) {
  fs::path tmp = temporary_sibling(dir);
  std::error_code ec;
  if (!dir.parent_path().empty()) fs::create_directories(dir.parent_path(), ec);
  try {
    fs::create_directories(tmp);
    fill(tmp);
    fsync_tree(tmp);
    fs::path old;
    if (fs::exists(dir)) {
      old = temporary_sibling(dir);
      fs::rename(dir, old, ec);
      QAD_CHECK(!ec, "cannot move the old {} aside: {}", dir.string(), ec.message());
    }
    fs::rename(tmp, dir, ec);
    if (ec && !old.empty()) {
      std::error_code restore;
      fs::rename(old, dir, restore);
    }
    QAD_CHECK(!ec, "cannot rename {} to {}: {}", tmp.string(), dir.string(), ec.message());
    if (!old.empty()) ::qad::remove_tree(old, ec);
    fsync_path(dir.parent_path().empty() ? fs::path(".") : dir.parent_path(), true);
  } catch (...) {
    std::error_code ignored;
    ::qad::remove_tree(tmp, ignored);
    throw;
  }
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  QAD_CHECK(in.good(), "cannot open {}: {}", path.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  QAD_CHECK(!in.bad(), "cannot read {}: {}", path.string(), std::strerror(errno));
  return ss.str();
}

}  // namespace qad
