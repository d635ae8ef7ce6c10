#include "util/remove_tree.h"

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "util/error.h"

namespace qad {
namespace {

thread_local std::uintmax_t removed_count = 0;

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  if (::remove(path) != 0) return errno;
  ++removed_count;
  return 0;
}

}  // namespace

std::uintmax_t remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept {
  ec.clear();
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) ec = std::error_code(errno, std::generic_category());
    return 0;
  }
  removed_count = 0;
  // Depth first (FTW_DEPTH) so directories are empty when removed; never follow symlinks (FTW_PHYS).
  const int rc = ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  if (rc != 0) ec = std::error_code(rc > 0 ? rc : errno, std::generic_category());
  return removed_count;
}

std::uintmax_t remove_tree(const std::filesystem::path& path) {
  std::error_code ec;
  const auto n = remove_tree(path, ec);
  QAD_CHECK(!ec, "cannot remove {}: {}", path.string(), ec.message());
  return n;
}

}  // namespace qad
