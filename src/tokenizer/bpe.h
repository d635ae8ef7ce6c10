// The BPE model of tokenizer.json: vocabulary, ranked merges (pair-list or "a b" form), ignore_merges,
// byte_fallback, unk/fuse_unk, continuing_subword_prefix/end_of_word_suffix. In byte-level mode the model
// takes raw bytes (the ByteLevel pre-tokenizer's mapping folded into the initial symbols), which saves
// building mapped strings. A per-thread cache maps pre-tokens to ids.
#pragma once
#include <array>
#include <atomic>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/flat_map.h"

namespace qad::tokenizer {

struct BpeConfig {
  std::vector<std::string> vocab;  // id -> token; "" for ids the file does not define
  std::vector<std::pair<std::string, std::string>> merges;
  std::optional<std::string> unk_token, continuing_subword_prefix, end_of_word_suffix;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
};

class BpeModel {
 public:
  // Throws qad::Error (the caller adds the file name) on merges whose parts or result are not in the vocab.
  explicit BpeModel(BpeConfig cfg);

  // True when every byte's byte-level character is in the vocab and no prefix/suffix is set, so that
  // raw-byte input is equivalent to ByteLevel-mapped input.
  bool can_use_byte_level() const;
  void set_byte_level(bool on) { byte_level_ = on; }
  bool byte_level() const { return byte_level_; }

  // Appends the ids of one pre-token (raw bytes in byte-level mode, else the token text).
  void tokenize(std::string_view piece, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  int64_t size() const { return static_cast<int64_t>(vocab_size_); }

 private:
  void initial_symbols(std::string_view piece, std::vector<int32_t>& syms) const;
  void merge(std::vector<int32_t>& syms) const;
  void merge_heap(std::vector<int32_t>& syms) const;

  std::vector<std::string> id_to_token_;
  size_t vocab_size_ = 0;
  FlatStringMap<int32_t> vocab_;        // token text -> id
  FlatStringMap<int32_t> bytes_vocab_;  // raw bytes -> id (byte-level mode, for ignore_merges)
  PairMap merges_;
  std::array<int32_t, 256> byte_ids_{};       // byte-level mode: raw byte -> id of its byte-level char
  std::array<int32_t, 256> fallback_ids_{};   // "<0xXX>" ids, -1 when absent
  std::optional<int32_t> unk_id_;
  std::string prefix_, suffix_;
  bool has_prefix_ = false, has_suffix_ = false;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false, byte_level_ = false;
  uint64_t cache_key_;  // identifies this model in the per-thread caches
};

}  // namespace qad::tokenizer
