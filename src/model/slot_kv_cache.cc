// SlotKVCache (see slot_kv_cache.h): per-slot writes by index_copy (prefill) and scatter (decode).
#include "model/slot_kv_cache.h"

#include "util/error.h"
#include "util/torch_format.h"

namespace qad::model {

SlotKVCache::SlotKVCache(const ModelConfig& c, int64_t slots, int64_t capacity, torch::Device device,
                         torch::ScalarType dtype)
    : slots_(slots), capacity_(capacity) {
  QAD_CHECK(slots >= 1 && capacity >= 1, "SlotKVCache needs >= 1 slot and capacity, got {} x {}", slots, capacity);
  auto opts = torch::TensorOptions().device(device).dtype(dtype);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    // Zeroed: masked positions multiply 0-probabilities into v, and 0 * NaN from uninitialised memory is NaN.
    k_.push_back(torch::zeros({slots, c.num_kv_heads, capacity, c.head_dim}, opts));
    v_.push_back(torch::zeros({slots, c.num_kv_heads, capacity, c.head_dim}, opts));
  }
}

int64_t SlotKVCache::bytes_per_token(const ModelConfig& c, torch::ScalarType dtype) {
  return 2 * c.num_layers * c.num_kv_heads * c.head_dim * static_cast<int64_t>(c10::elementSize(dtype));
}

void SlotKVCache::begin_prefill(const torch::Tensor& slots) {
  mode_ = Mode::kPrefill;
  prefill_slots_ = slots;
}

void SlotKVCache::begin_decode(const torch::Tensor& positions, int64_t span) {
  QAD_CHECK(positions.dim() == 1 && positions.size(0) == slots_, "SlotKVCache: decode positions must be [{}], got {}",
            slots_, shape_str(positions.sizes()));
  QAD_CHECK(span >= 1 && span <= capacity_, "SlotKVCache: span {} outside [1, {}]", span, capacity_);
  mode_ = Mode::kDecode;
  span_ = span;
  const auto& k0 = k_.front();
  decode_index_ = positions.view({slots_, 1, 1, 1}).expand({slots_, k0.size(1), 1, k0.size(3)});
}

void SlotKVCache::select_slots(const torch::Tensor& keep) {
  for (auto& t : k_) t = t.index_select(0, keep);
  for (auto& t : v_) t = t.index_select(0, keep);
  slots_ = keep.size(0);
  mode_ = Mode::kNone;
}

std::pair<torch::Tensor, torch::Tensor> SlotKVCache::append(int64_t l, const torch::Tensor& new_k,
                                                            const torch::Tensor& new_v) {
  auto& kl = k_[static_cast<size_t>(l)];
  auto& vl = v_[static_cast<size_t>(l)];
  if (mode_ == Mode::kPrefill) {
    const int64_t t = new_k.size(2);
    QAD_CHECK(t <= capacity_, "SlotKVCache: a {}-token prompt exceeds the capacity {}", t, capacity_);
    kl.narrow(2, 0, t).index_copy_(0, prefill_slots_, new_k);
    vl.narrow(2, 0, t).index_copy_(0, prefill_slots_, new_v);
    return {new_k, new_v};
  }
  QAD_CHECK(mode_ == Mode::kDecode, "SlotKVCache: call begin_prefill or begin_decode before a forward");
  QAD_CHECK(new_k.size(0) == slots_ && new_k.size(2) == 1, "SlotKVCache: decode takes [{}, 1] tokens, got keys {}",
            slots_, shape_str(new_k.sizes()));
  kl.scatter_(2, decode_index_, new_k);
  vl.scatter_(2, decode_index_, new_v);
  return {kl.narrow(2, 0, span_), vl.narrow(2, 0, span_)};
}

}  // namespace qad::model
