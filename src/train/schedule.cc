// Learning-rate schedule (closed form; see schedule.h).
#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace qad::train {

Schedule Schedule::from_config(const OptimConfig& o, int64_t total_steps) {
  Schedule s;
  s.peak = o.lr;
  s.min_ratio = o.min_lr_ratio;
  s.total = std::max<int64_t>(total_steps, 1);
  s.warmup = o.warmup_steps >= 0 ? o.warmup_steps
                                 : static_cast<int64_t>(std::llround(o.warmup_fraction * static_cast<double>(s.total)));
  s.warmup = std::clamp<int64_t>(s.warmup, 0, s.total);
  s.kind = o.schedule == "linear" ? Kind::kLinear : o.schedule == "constant" ? Kind::kConstant : Kind::kCosine;
  return s;
}

double Schedule::lr(int64_t step) const {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (kind == Kind::kConstant) return peak;
  const double min_lr = peak * min_ratio;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup - 1));
  const double p = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);
  if (kind == Kind::kLinear) return peak - (peak - min_lr) * p;
  return min_lr + (peak - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
}

}  // namespace qad::train
