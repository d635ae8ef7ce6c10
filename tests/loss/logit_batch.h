// Random student / teacher logits and a token mask for the KL tests: FP64 [b, n, v] logits of spread 2, about 70 %
// of the tokens kept, with the first token kept and the last one of the second row masked (both cases present).
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "common/test_util.h"

namespace qad::loss {

struct LogitBatch {
  torch::Tensor s, t, mask;
};

inline LogitBatch random_logit_batch(uint64_t salt, int64_t b, int64_t n, int64_t v) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto gen = qad::testing::seeded_generator(salt);
  LogitBatch x;
  x.s = torch::randn({b, n, v}, gen, f64) * 2;
  x.t = torch::randn({b, n, v}, gen, f64) * 2;
  x.mask = torch::rand({b, n}, gen, f64) > 0.3;
  x.mask[0][0] = true;
  x.mask[1][n - 1] = false;
  return x;
}

}  // namespace qad::loss
