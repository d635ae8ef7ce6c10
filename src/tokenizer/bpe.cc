// BPE encoding with HF tokenizers' semantics: the lowest-ranked adjacent pair merges first, leftmost on
// ties (as HF's BinaryHeap of (rank, position) does), until no pair merges.
#include "tokenizer/bpe.h"

#include <algorithm>
#include <memory>
#include <queue>

#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

std::atomic<uint64_t> g_next_cache_key{1};

// Per-thread cache of pre-token -> ids for one model. Bounded: cleared when full.
struct Cache {
  static constexpr size_t kMaxEntries = 1 << 17;
  static constexpr size_t kMaxKeyBytes = 128;
  struct Span {
    uint32_t off = 0, len = 0;
  };
  FlatStringMap<Span> map;
  std::vector<int32_t> ids;
};

Cache& thread_cache(uint64_t key) {
  struct Entry {
    uint64_t key;
    std::unique_ptr<Cache> cache;
  };
  thread_local std::vector<Entry> caches;
  for (auto& e : caches)
    if (e.key == key) return *e.cache;
  if (caches.size() >= 8) caches.erase(caches.begin());  // oldest model first
  caches.push_back({key, std::make_unique<Cache>()});
  return *caches.back().cache;
}

constexpr size_t kLinearMergeMax = 192;  // longer words use the heap

}  // namespace

BpeModel::BpeModel(BpeConfig cfg) : cache_key_(g_next_cache_key.fetch_add(1)) {
  id_to_token_ = std::move(cfg.vocab);
  vocab_.reserve(id_to_token_.size());
  for (size_t id = 0; id < id_to_token_.size(); ++id) {
    if (id_to_token_[id].empty()) continue;
    vocab_.insert(id_to_token_[id], static_cast<int32_t>(id));
    ++vocab_size_;
  }
  if (cfg.continuing_subword_prefix) {
    prefix_ = *cfg.continuing_subword_prefix;
    has_prefix_ = true;
  }
  if (cfg.end_of_word_suffix) {
    suffix_ = *cfg.end_of_word_suffix;
    has_suffix_ = true;
  }
  byte_fallback_ = cfg.byte_fallback;
  fuse_unk_ = cfg.fuse_unk;
  ignore_merges_ = cfg.ignore_merges;
  if (cfg.unk_token) {
    const int32_t* u = vocab_.find(*cfg.unk_token);
    QAD_CHECK(u, "model.unk_token '{}' is not in model.vocab", *cfg.unk_token);
    unk_id_ = *u;
  }
  merges_.reserve(cfg.merges.size());
  for (size_t rank = 0; rank < cfg.merges.size(); ++rank) {
    const auto& [a, b] = cfg.merges[rank];
    const int32_t* ia = vocab_.find(a);
    const int32_t* ib = vocab_.find(b);
    QAD_CHECK(ia && ib, "model.merges[{}] = ('{}', '{}'): a part is not in model.vocab", rank, a, b);
    std::string merged = a;
    merged.append(has_prefix_ && b.compare(0, prefix_.size(), prefix_) == 0 ? b.substr(prefix_.size()) : b);
    const int32_t* im = vocab_.find(merged);
    QAD_CHECK(im, "model.merges[{}] = ('{}', '{}'): the merged token '{}' is not in model.vocab", rank, a, b, merged);
    merges_.insert(*ia, *ib, {static_cast<int32_t>(rank), *im});
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const int32_t* f = vocab_.find(name);
    fallback_ids_[static_cast<size_t>(b)] = f ? *f : -1;
    std::string ch;
    utf8::append(ch, byte_to_char()[static_cast<size_t>(b)]);
    const int32_t* id = vocab_.find(ch);
    byte_ids_[static_cast<size_t>(b)] = id ? *id : -1;
  }
  // Raw-byte keys for byte-level mode: tokens made only of byte-level characters.
  bytes_vocab_.reserve(vocab_size_);
  for (size_t id = 0; id < id_to_token_.size(); ++id) {
    const std::string& t = id_to_token_[id];
    std::string raw;
    bool ok = !t.empty();
    for (size_t i = 0; ok && i < t.size();) {
      const int b = char_to_byte(utf8::decode(t, i));
      if (b < 0) ok = false;
      else raw.push_back(static_cast<char>(b));
    }
    if (ok) bytes_vocab_.insert(raw, static_cast<int32_t>(id));
  }
}

bool BpeModel::can_use_byte_level() const {
  if (has_prefix_ || has_suffix_) return false;
  return std::all_of(byte_ids_.begin(), byte_ids_.end(), [](int32_t id) { return id >= 0; });
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  if (const int32_t* id = vocab_.find(token)) return *id;
  return std::nullopt;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || id_to_token_[static_cast<size_t>(id)].empty())
    return nullptr;
  return &id_to_token_[static_cast<size_t>(id)];
}

// HF BPE::merge_word's symbol construction: one symbol per character (prefix on all but the first, suffix
// on the last); unknown characters go to byte fallback, then to unk (fused when fuse_unk), else are dropped.
void BpeModel::initial_symbols(std::string_view w, std::vector<int32_t>& syms) const {
  if (byte_level_) {
    for (unsigned char b : w) syms.push_back(byte_ids_[b]);
    return;
  }
  int32_t pending_unk = -1;  // an unk waiting to be emitted (fused when fuse_unk)
  std::string s;
  for (size_t i = 0; i < w.size();) {
    const size_t start = i;
    i += utf8::seq_len(static_cast<unsigned char>(w[i]));
    std::string_view ch = w.substr(start, i - start);
    const int32_t* id;
    if (!has_prefix_ && !has_suffix_) {
      id = vocab_.find(ch);
    } else {
      s.clear();
      if (start != 0 && has_prefix_) s += prefix_;
      s += ch;
      if (i == w.size() && has_suffix_) s += suffix_;
      id = vocab_.find(s);
    }
    if (id) {
      if (pending_unk >= 0) {
        syms.push_back(pending_unk);
        pending_unk = -1;
      }
      syms.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      std::string_view bytes = (has_prefix_ || has_suffix_) ? std::string_view(s) : ch;
      bool all = std::all_of(bytes.begin(), bytes.end(),
                             [&](char c) { return fallback_ids_[static_cast<unsigned char>(c)] >= 0; });
      if (all) {
        for (char c : bytes) syms.push_back(fallback_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) syms.push_back(pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) syms.push_back(pending_unk);
}

void BpeModel::merge(std::vector<int32_t>& syms) const {
  const size_t n = syms.size();
  if (n < 2) return;
  if (n > kLinearMergeMax) {
    merge_heap(syms);
    return;
  }
  // ranks[i] = rank of (syms[i], syms[i+1]); repeatedly merge the leftmost minimum.
  int32_t ranks[kLinearMergeMax];
  int32_t merged[kLinearMergeMax];
  constexpr int32_t kNone = INT32_MAX;
  size_t len = n;
  for (size_t i = 0; i + 1 < len; ++i) {
    const auto m = merges_.find(syms[i], syms[i + 1]);
    ranks[i] = m.rank >= 0 ? m.rank : kNone;
    merged[i] = m.id;
  }
  while (len > 1) {
    size_t best = 0;
    int32_t best_rank = kNone;
    for (size_t i = 0; i + 1 < len; ++i) {
      if (ranks[i] < best_rank) {
        best_rank = ranks[i];
        best = i;
      }
    }
    if (best_rank == kNone) break;
    syms[best] = merged[best];
    for (size_t i = best + 1; i + 1 < len; ++i) {
      syms[i] = syms[i + 1];
      ranks[i] = ranks[i + 1];
      merged[i] = merged[i + 1];
    }
    --len;
    if (best + 1 < len) {
      const auto m = merges_.find(syms[best], syms[best + 1]);
      ranks[best] = m.rank >= 0 ? m.rank : kNone;
      merged[best] = m.id;
    }
    if (best > 0) {
      const auto m = merges_.find(syms[best - 1], syms[best]);
      ranks[best - 1] = m.rank >= 0 ? m.rank : kNone;
      merged[best - 1] = m.id;
    }
  }
  syms.resize(len);
}

void BpeModel::merge_heap(std::vector<int32_t>& syms) const {
  const int n = static_cast<int>(syms.size());
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  std::vector<bool> alive(static_cast<size_t>(n), true);
  for (int i = 0; i < n; ++i) {
    prev[static_cast<size_t>(i)] = i - 1;
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
  }
  using Entry = std::pair<int32_t, int>;  // (rank, position): smallest rank, then leftmost
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  for (int i = 0; i + 1 < n; ++i) {
    const auto m = merges_.find(syms[static_cast<size_t>(i)], syms[static_cast<size_t>(i + 1)]);
    if (m.rank >= 0) heap.push({m.rank, i});
  }
  while (!heap.empty()) {
    const auto [rank, i] = heap.top();
    heap.pop();
    const auto ui = static_cast<size_t>(i);
    if (!alive[ui] || next[ui] < 0) continue;
    const auto j = static_cast<size_t>(next[ui]);
    const auto m = merges_.find(syms[ui], syms[j]);
    if (m.rank != rank) continue;  // stale entry
    syms[ui] = m.id;
    alive[j] = false;
    next[ui] = next[j];
    if (next[j] >= 0) prev[static_cast<size_t>(next[j])] = i;
    if (prev[ui] >= 0) {
      const auto p = static_cast<size_t>(prev[ui]);
      const auto pm = merges_.find(syms[p], syms[ui]);
      if (pm.rank >= 0) heap.push({pm.rank, prev[ui]});
    }
    if (next[ui] >= 0) {
      const auto nm = merges_.find(syms[ui], syms[static_cast<size_t>(next[ui])]);
      if (nm.rank >= 0) heap.push({nm.rank, i});
    }
  }
  size_t out = 0;
  for (int i = 0; i >= 0; i = next[static_cast<size_t>(i)]) syms[out++] = syms[static_cast<size_t>(i)];
  syms.resize(out);
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (byte_level_ && piece.size() == 1) {  // a single byte is its own token: skip the cache
    out.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (ignore_merges_) {
    const int32_t* id = byte_level_ ? bytes_vocab_.find(piece) : vocab_.find(piece);
    if (id) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = piece.size() <= Cache::kMaxKeyBytes;
  Cache* cache = nullptr;
  if (cacheable) {
    cache = &thread_cache(cache_key_);
    if (const Cache::Span* hit = cache->map.find(piece)) {
      out.insert(out.end(), cache->ids.begin() + hit->off, cache->ids.begin() + hit->off + hit->len);
      return;
    }
  }
  thread_local std::vector<int32_t> syms;
  syms.clear();
  initial_symbols(piece, syms);
  merge(syms);
  out.insert(out.end(), syms.begin(), syms.end());
  if (cache) {
    if (cache->map.size() >= Cache::kMaxEntries) {
      cache->map.clear();
      cache->ids.clear();
    }
    cache->map.insert(piece, {static_cast<uint32_t>(cache->ids.size()), static_cast<uint32_t>(syms.size())});
    cache->ids.insert(cache->ids.end(), syms.begin(), syms.end());
  }
}

}  // namespace qad::tokenizer
