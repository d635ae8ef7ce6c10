// Open-addressing hash maps for the encoder's hot path: byte-string keys (vocabulary, pre-token cache)
// and (left id, right id) merge pairs. Keys live in one arena; no allocation per entry.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace qad::tokenizer {

inline uint64_t hash_bytes(std::string_view s) {
  // 8 bytes at a time, multiply-xorshift mixing (good enough for short keys, fast for long ones).
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xC2B2AE3D27D4EB4Full);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  uint64_t w = 0;
  if (s.size() > i) std::memcpy(&w, s.data() + i, s.size() - i);
  h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 29;
  return h;
}

// Map from byte string to a fixed-size value V. Insert overwrites.
template <typename V>
class FlatStringMap {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    if (cap > slots_.size()) rehash(cap);
  }
  size_t size() const { return size_; }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    arena_.clear();
    size_ = 0;
  }
  size_t arena_bytes() const { return arena_.size(); }

  void insert(std::string_view key, V value) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 64 : slots_.size() * 2);
    const uint64_t h = hash_bytes(key);
    size_t i = h & (slots_.size() - 1);
    while (slots_[i].used) {
      if (slots_[i].hash == h && view(slots_[i]) == key) {
        slots_[i].value = value;
        return;
      }
      i = (i + 1) & (slots_.size() - 1);
    }
    slots_[i] = Slot{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), true, value};
    arena_.append(key);
    ++size_;
  }

  const V* find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    const uint64_t h = hash_bytes(key);
    size_t i = h & (slots_.size() - 1);
    while (slots_[i].used) {
      if (slots_[i].hash == h && slots_[i].len == key.size() && same_bytes(arena_.data() + slots_[i].off, key))
        return &slots_[i].value;
      i = (i + 1) & (slots_.size() - 1);
    }
    return nullptr;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0, len = 0;
    bool used = false;
    V value{};
  };
  // Short keys (most pre-tokens) compare without a memcmp call.
  static bool same_bytes(const char* a, std::string_view b) {
    if (b.size() <= 8) {
      for (size_t k = 0; k < b.size(); ++k)
        if (a[k] != b[k]) return false;
      return true;
    }
    return std::memcmp(a, b.data(), b.size()) == 0;
  }
  std::string_view view(const Slot& s) const { return std::string_view(arena_).substr(s.off, s.len); }
  void rehash(size_t cap) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(cap, Slot{});
    for (const Slot& s : old) {
      if (!s.used) continue;
      size_t i = s.hash & (cap - 1);
      while (slots_[i].used) i = (i + 1) & (cap - 1);
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  size_t size_ = 0;
};

// Map from a pair of token ids to (merge rank, merged id).
class PairMap {
 public:
  struct Merge {
    int32_t rank = -1;
    int32_t id = -1;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    if (cap > slots_.size()) rehash(cap);
  }
  size_t size() const { return size_; }
  void insert(int32_t a, int32_t b, Merge m) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 64 : slots_.size() * 2);
    const uint64_t k = key(a, b);
    size_t i = mix(k) & (slots_.size() - 1);
    while (slots_[i].m.rank >= 0) {
      if (slots_[i].k == k) {
        slots_[i].m = m;
        return;
      }
      i = (i + 1) & (slots_.size() - 1);
    }
    slots_[i] = Slot{k, m};
    ++size_;
  }
  // rank < 0 when the pair does not merge.
  Merge find(int32_t a, int32_t b) const {
    if (slots_.empty()) return {};
    const uint64_t k = key(a, b);
    size_t i = mix(k) & (slots_.size() - 1);
    while (slots_[i].m.rank >= 0) {
      if (slots_[i].k == k) return slots_[i].m;
      i = (i + 1) & (slots_.size() - 1);
    }
    return {};
  }

 private:
  struct Slot {
    uint64_t k = 0;
    Merge m;
  };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  static uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    return k;
  }
  void rehash(size_t cap) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(cap, Slot{});
    for (const Slot& s : old) {
      if (s.m.rank < 0) continue;
      size_t i = mix(s.k) & (cap - 1);
      while (slots_[i].m.rank >= 0) i = (i + 1) & (cap - 1);
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

}  // namespace qad::tokenizer
