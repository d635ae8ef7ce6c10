// The learning-rate schedule: linear warmup to the peak, then cosine / linear decay to lr * min_lr_ratio
// (or constant). A closed form of the step index, so a resumed run needs no scheduler state.
#pragma once
#include <cstdint>

#include "train/config.h"

namespace qad::train {

struct Schedule {
  double peak = 1e-5, min_ratio = 0.0;
  int64_t total = 1, warmup = 0;
  enum class Kind { kCosine, kLinear, kConstant } kind = Kind::kCosine;

  static Schedule from_config(const OptimConfig& o, int64_t total_steps);
  // lr of optimizer step `step` (0-based): warmup gives peak * (step + 1) / warmup for step < warmup; then
  // p = (step - warmup) / max(1, total - warmup - 1) in [0, 1]: cosine min + (peak - min)(1 + cos(pi p)) / 2,
  // linear peak - (peak - min) p. The last step reaches min exactly.
  double lr(int64_t step) const;
};

}  // namespace qad::train
