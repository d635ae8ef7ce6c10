// SlotKVCache: the KV cache of continuous batching. Each of `slots` rows holds one sequence with its own
// length; a finished sequence's slot is refilled by a waiting prompt while the others keep decoding.
// A forward either prefills some slots (their prompts, right-padded, positions 0..T-1) or decodes one token
// in every slot at that slot's own position. Positions past a slot's length hold stale values that the
// caller's keep mask hides (the buffers start zeroed, so they are always finite).
#pragma once
#include <torch/torch.h>

#include <vector>

#include "model/config.h"
#include "model/kv_cache.h"

namespace qad::model {

class SlotKVCache : public KVStore {
 public:
  SlotKVCache(const ModelConfig& c, int64_t slots, int64_t capacity, torch::Device device, torch::ScalarType dtype);

  // Bytes of keys and values one cached token takes over all layers.
  static int64_t bytes_per_token(const ModelConfig& c, torch::ScalarType dtype);

  // The next forward writes its rows ([n, T] tokens, right-padded) into `slots` (int64 [n]) at positions
  // [0, T), and attends causally among those T tokens only.
  void begin_prefill(const torch::Tensor& slots);
  // The next forward takes one token per slot ([slots, 1]) and writes it at `positions` (int64 [slots], each
  // < capacity); attention reads positions [0, span) of every slot (the caller's mask hides the rest).
  void begin_decode(const torch::Tensor& positions, int64_t span);
  // Keeps only the slots `keep` (int64 [n], in this order): the batch shrinks when few sequences are left.
  void select_slots(const torch::Tensor& keep);

  std::pair<torch::Tensor, torch::Tensor> append(int64_t l, const torch::Tensor& new_k, const torch::Tensor& new_v) override;

  int64_t slots() const { return slots_; }
  int64_t capacity() const { return capacity_; }

 private:
  enum class Mode { kNone, kPrefill, kDecode };
  int64_t slots_, capacity_;
  std::vector<torch::Tensor> k_, v_;  // per layer [slots, Hkv, capacity, D]
  Mode mode_ = Mode::kNone;
  torch::Tensor prefill_slots_, decode_index_;
  int64_t span_ = 0;
};

}  // namespace qad::model
