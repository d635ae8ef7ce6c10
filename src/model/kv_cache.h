// KVCache: per-layer key/value buffers for incremental decoding, preallocated to a fixed capacity so that
// each step writes in place instead of concatenating.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "model/config.h"
#include "util/error.h"

namespace qad::model {

// Where attention layers put this step's keys/values and find the ones to attend to. KVCache (one shared
// length) and SlotKVCache (slot_kv_cache.h: one length per slot, continuous batching) implement it.
struct KVStore {
  virtual ~KVStore() = default;
  // Stores layer `l`'s new keys/values [B, Hkv, T, D] (after RoPE) and returns the keys/values to attend to.
  virtual std::pair<torch::Tensor, torch::Tensor> append(int64_t l, const torch::Tensor& new_k,
                                                         const torch::Tensor& new_v) = 0;
};

struct KVCache : KVStore {
  KVCache(const ModelConfig& c, int64_t batch, int64_t capacity, torch::Device device, torch::ScalarType dtype)
      : batch(batch), capacity(capacity) {
    auto opts = torch::TensorOptions().device(device).dtype(dtype);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      k.push_back(torch::empty({batch, c.num_kv_heads, capacity, c.head_dim}, opts));
      v.push_back(torch::empty({batch, c.num_kv_heads, capacity, c.head_dim}, opts));
    }
  }

  // Writes this step's keys/values ([B, Hkv, T, D], after RoPE) of layer `l` at [length, length+T) and
  // returns views of everything cached so far, [B, Hkv, length+T, D]. `length` itself advances once per
  // forward (CausalLM::forward calls advance()).
  std::pair<torch::Tensor, torch::Tensor> append(int64_t l, const torch::Tensor& new_k, const torch::Tensor& new_v) override {
    const int64_t t = new_k.size(2);
    QAD_CHECK(length + t <= capacity, "KV cache full: {} cached + {} new tokens > capacity {}", length, t, capacity);
    QAD_CHECK(new_k.size(0) == batch, "KV cache was made for batch {}, got batch {}", batch, new_k.size(0));
    auto& kl = k[static_cast<size_t>(l)];
    auto& vl = v[static_cast<size_t>(l)];
    kl.narrow(2, length, t).copy_(new_k);
    vl.narrow(2, length, t).copy_(new_v);
    return {kl.narrow(2, 0, length + t), vl.narrow(2, 0, length + t)};
  }

  void advance(int64_t t) { length += t; }

  int64_t batch;
  int64_t capacity;
  int64_t length = 0;
  std::vector<torch::Tensor> k, v;
};

}  // namespace qad::model
