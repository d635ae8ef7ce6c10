// Random token batches for the training tests: ids and targets uniform in [0, vocab), row r with lens[r] real
// tokens followed by padding (masked out of the loss and attention).
#pragma once

#include <torch/torch.h>

#include <vector>

#include "common/test_util.h"
#include "data/batch_tensors.h"

namespace qad::train {

inline data::BatchTensors padded_random_batch(const std::vector<int64_t>& lens, int64_t t, int64_t vocab,
                                              uint64_t salt) {
  auto gen = qad::testing::seeded_generator(salt);
  const int64_t b = static_cast<int64_t>(lens.size());
  data::BatchTensors x;
  x.input_ids = torch::randint(vocab, {b, t}, gen, torch::kLong);
  x.targets = torch::randint(vocab, {b, t}, gen, torch::kLong);
  x.loss_mask = torch::zeros({b, t}, torch::kFloat32);
  x.attention_mask = torch::zeros({b, t}, torch::kBool);
  for (int64_t r = 0; r < b; ++r) {
    x.loss_mask[r].narrow(0, 0, lens[r]).fill_(1);
    x.attention_mask[r].narrow(0, 0, lens[r]).fill_(true);
  }
  return x;
}

// `rows` rows of t real tokens.
inline data::BatchTensors random_batch(int64_t rows, int64_t t, int64_t vocab, uint64_t salt) {
  return padded_random_batch(std::vector<int64_t>(static_cast<size_t>(rows), t), t, vocab, salt);
}

}  // namespace qad::train
