// Reference-BLAS detection (see blas_check.h).
#include "util/blas_check.h"

#include <fstream>

namespace qad {

std::optional<std::string> loaded_reference_blas() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const auto name = path.rfind('/');
    if (path.compare(name, 11, "/libblas.so") != 0) continue;
    const auto dir = path.rfind('/', name - 1);
    if (dir != std::string::npos && path.compare(dir, name - dir, "/blas") == 0) return path;
  }
  return std::nullopt;
}

}  // namespace qad
