// remove_stale_temporaries (see stale_temporaries.h).
#include "util/stale_temporaries.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include "util/remove_tree.h"

namespace qad {
namespace fs = std::filesystem;

long temporary_owner_pid(const std::string& n) {
  if (n.size() < 2 || n[0] != '.') return -1;
  const auto at = n.rfind(".tmp-");
  if (at == std::string::npos || at == 0) return -1;
  const std::string rest = n.substr(at + 5);  // "<pid>-<n>"
  const auto dash = rest.find('-');
  if (dash == std::string::npos || dash == 0 || dash + 1 == rest.size()) return -1;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (i != dash && (rest[i] < '0' || rest[i] > '9')) return -1;
  }
  return std::strtol(rest.substr(0, dash).c_str(), nullptr, 10);
}

std::vector<fs::path> remove_stale_temporaries(const fs::path& dir) {
  std::vector<fs::path> removed;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return removed;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const long pid = temporary_owner_pid(it->path().filename().string());
    if (pid <= 0 || pid == static_cast<long>(::getpid())) continue;
    // A live process with that pid may still be writing it (another job on this host): leave it.
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    stale.push_back(it->path());
  }
  for (const auto& p : stale) {
    std::error_code rec;
    ::qad::remove_tree(p, rec);
    if (!rec) removed.push_back(p);
  }
  return removed;
}

}  // namespace qad
