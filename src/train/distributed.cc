// Gradient reduction across data-parallel ranks: nothing to do with one rank.
#include "train/distributed.h"

#include "util/error.h"

namespace qad::train {

void reduce_gradients(AdamW& optimizer, const DistConfig& dist) {
  (void)optimizer;
  QAD_CHECK(dist.world_size == 1, "data-parallel training (world_size {}) is not implemented yet; run one process",
            dist.world_size);
}

}  // namespace qad::train
