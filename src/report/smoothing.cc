// Debiased exponential moving average (see smoothing.h).
#include "report/smoothing.h"

#include <cmath>

#include "util/error.h"

namespace qad::report {

std::vector<Point> ema_smooth(const std::vector<Point>& points, double weight) {
  QAD_CHECK(weight >= 0 && weight < 1, "--smooth {}: the EMA weight must be in [0, 1) (0 = off, 0.9 = strong)", weight);
  if (weight == 0) return points;
  std::vector<Point> out;
  out.reserve(points.size());
  double acc = 0, bias = 1;  // bias = W^n
  for (const auto& p : points) {
    if (!std::isfinite(p.y)) {
      out.push_back(p);
      continue;
    }
    acc = weight * acc + (1 - weight) * p.y;
    bias *= weight;
    out.push_back({p.x, acc / (1 - bias)});
  }
  return out;
}

}  // namespace qad::report
