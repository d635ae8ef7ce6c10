// Noise of an accuracy difference (accuracy_noise.h).
#include "demo/accuracy_noise.h"

#include <fmt/format.h>

#include <cmath>

namespace qad::demo {

double accuracy_noise(double a, double b, int64_t n) {
  if (n <= 0) return INFINITY;
  const double dn = static_cast<double>(n);
  return 2.0 * std::sqrt(a * (1 - a) / dn + b * (1 - b) / dn);
}

std::string compare_accuracies(double a, double b, int64_t n) {
  const double noise = accuracy_noise(a, b, n);
  const double gap = a - b;
  if (std::abs(gap) <= noise) {
    return fmt::format("{:.1f} % vs {:.1f} %: within the test's noise (±{:.1f} points)", 100 * a, 100 * b,
                       100 * noise);
  }
  return fmt::format("{:.1f} % vs {:.1f} %: {:+.1f} points (the test's noise ±{:.1f})", 100 * a, 100 * b, 100 * gap,
                     100 * noise);
}

}  // namespace qad::demo
