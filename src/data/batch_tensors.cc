#include "data/batch_tensors.h"

#include <algorithm>

#include "util/error.h"

namespace qad::data {
namespace {

// The facts of host tensors, from the same comparisons the training step would make on the device, bound to b's
// tensors (the ones they describe).
HostFacts facts_of(const torch::Tensor& targets, const torch::Tensor& loss_mask, const torch::Tensor& attention_mask,
                   const BatchTensors& b) {
  HostFacts f;
  f.known = true;
  f.targets = b.targets;
  f.loss_mask = b.loss_mask;
  f.attention_mask = b.attention_mask;
  if (attention_mask.defined()) f.padded = !attention_mask.all().item<bool>();
  if (targets.defined()) {
    const auto labels = targets.masked_select(labels_read(targets, loss_mask));
    f.labels = labels.numel();
    if (f.labels > 0) {
      f.min_label = labels.min().item<int64_t>();
      f.max_label = labels.max().item<int64_t>();
    }
  }
  if (loss_mask.defined()) f.loss_tokens = loss_mask.sum().item<int64_t>();
  return f;
}

bool describes(const HostFacts& f, const torch::Tensor& described, const torch::Tensor& now) {
  return f.known && described.is_same(now);
}

}  // namespace

BatchTensors to_tensors(const Batch& b, const torch::Device& device) {
  const auto cells = static_cast<size_t>(b.batch * b.seq_len);
  QAD_CHECK(b.input_ids.size() == cells && b.targets.size() == cells && b.loss_mask.size() == cells &&
                b.attention_mask.size() == cells,
            "batch buffers do not match its shape [{}, {}]", b.batch, b.seq_len);
  const std::vector<int64_t> shape{b.batch, b.seq_len};
  // A copy out of the batch's buffers (from_blob does not own them), on `device` in the type `to`.
  auto copy = [&](const void* data, torch::ScalarType type, torch::Device where, torch::ScalarType to) {
    return torch::from_blob(const_cast<void*>(data), shape, torch::TensorOptions().dtype(type))
        .to(where, to, /*non_blocking=*/false, /*copy=*/true);
  };
  // The fields the facts are taken from, on the host first.
  const auto targets = copy(b.targets.data(), torch::kInt32, torch::kCPU, torch::kInt64);
  const auto loss_mask = copy(b.loss_mask.data(), torch::kUInt8, torch::kCPU, torch::kFloat32);
  const auto attention_mask = copy(b.attention_mask.data(), torch::kUInt8, torch::kCPU, torch::kBool);
  BatchTensors t;
  t.input_ids = copy(b.input_ids.data(), torch::kInt32, device, torch::kInt64);
  t.targets = targets.to(device);
  t.loss_mask = loss_mask.to(device);
  t.attention_mask = attention_mask.to(device);
  t.host = facts_of(targets, loss_mask, attention_mask, t);
  return t;
}

HostFacts read_host_facts(const BatchTensors& b) {
  auto cpu = [](const torch::Tensor& x) { return x.defined() ? x.cpu() : x; };
  return facts_of(cpu(b.targets), cpu(b.loss_mask), cpu(b.attention_mask), b);
}

bool has_padding(const BatchTensors& b) {
  if (!b.attention_mask.defined()) return false;
  if (describes(b.host, b.host.attention_mask, b.attention_mask)) return b.host.padded;
  return !b.attention_mask.all().item<bool>();
}

bool has_padding(const Batch& b, int64_t first, int64_t count) {
  QAD_CHECK(first >= 0 && count >= 0 && first + count <= b.batch &&
                b.attention_mask.size() == static_cast<size_t>(b.batch * b.seq_len),
            "has_padding: rows [{}, {}) of a [{}, {}] batch with {} mask bytes", first, first + count, b.batch,
            b.seq_len, b.attention_mask.size());
  const auto begin = b.attention_mask.begin() + first * b.seq_len;
  return std::find(begin, begin + count * b.seq_len, uint8_t{0}) != begin + count * b.seq_len;
}

bool labels_known_in_range(const BatchTensors& b, int64_t vocab) {
  const auto& h = b.host;
  return describes(h, h.targets, b.targets) && describes(h, h.loss_mask, b.loss_mask) &&
         (h.labels == 0 || (h.min_label >= 0 && h.max_label < vocab));
}

torch::Tensor labels_read(const torch::Tensor& targets, const torch::Tensor& loss_mask) {
  auto used = targets != -100;
  return loss_mask.defined() ? used.logical_and(loss_mask.to(targets.device()) != 0) : used;
}

int64_t loss_tokens(const BatchTensors& b) {
  if (describes(b.host, b.host.loss_mask, b.loss_mask)) return b.host.loss_tokens;
  return b.loss_mask.sum().item<int64_t>();
}

}  // namespace qad::data
