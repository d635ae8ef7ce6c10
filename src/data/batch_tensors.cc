#include "data/batch_tensors.h"

#include "util/error.h"

namespace qad::data {

BatchTensors to_tensors(const Batch& b, const torch::Device& device) {
  const auto cells = static_cast<size_t>(b.batch * b.seq_len);
  QAD_CHECK(b.input_ids.size() == cells && b.targets.size() == cells && b.loss_mask.size() == cells &&
                b.attention_mask.size() == cells,
            "batch buffers do not match its shape [{}, {}]", b.batch, b.seq_len);
  const std::vector<int64_t> shape{b.batch, b.seq_len};
  auto from = [&](const void* data, torch::ScalarType type) {
    // from_blob does not own the memory: clone before the batch goes away.
    return torch::from_blob(const_cast<void*>(data), shape, torch::TensorOptions().dtype(type)).clone();
  };
  BatchTensors t;
  t.input_ids = from(b.input_ids.data(), torch::kInt32).to(device, torch::kInt64);
  t.targets = from(b.targets.data(), torch::kInt32).to(device, torch::kInt64);
  t.loss_mask = from(b.loss_mask.data(), torch::kUInt8).to(device, torch::kFloat32);
  t.attention_mask = from(b.attention_mask.data(), torch::kUInt8).to(device, torch::kBool);
  return t;
}

}  // namespace qad::data
