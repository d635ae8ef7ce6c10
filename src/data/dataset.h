// A prepared token dataset directory opened for reading: index.json plus memory-mapped shards, checked
// for consistency (counts, offsets, token ids below the vocabulary size) before anything is read.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/shard_format.h"

namespace qad::data {

inline constexpr const char* kDatasetFormat = "qad-token-dataset";
inline constexpr int kDatasetVersion = 1;
inline constexpr const char* kIndexFile = "index.json";

// One document of a dataset, valid while the dataset lives.
struct DocumentView {
  const MappedShard* shard = nullptr;
  uint64_t first = 0;  // first token inside the shard
  uint64_t size = 0;   // tokens
  DocumentSource source{};
  uint32_t token(uint64_t i) const { return shard->tokens()[first + i]; }
  bool mask(uint64_t i) const { return shard->mask(first + i); }
  bool is_chat() const { return (source.flags & kDocumentIsChat) != 0; }
};

class TokenDataset {
 public:
  explicit TokenDataset(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const nlohmann::json& index() const { return index_; }
  uint64_t num_documents() const { return doc_starts_.back(); }
  uint64_t num_tokens() const { return num_tokens_; }
  std::string fingerprint() const;
  int64_t vocab_size() const;
  std::optional<int32_t> eos_id() const;
  double valid_fraction() const;  // the default recorded at prepare time
  uint64_t split_seed() const;
  const std::string& input_path(uint32_t input_index) const;

  DocumentView document(uint64_t i) const;

 private:
  std::filesystem::path dir_;
  nlohmann::json index_;
  std::vector<std::unique_ptr<MappedShard>> shards_;
  std::vector<uint64_t> doc_starts_{0};  // global index of each shard's first document; back() = total
  std::vector<std::string> inputs_;
  uint64_t num_tokens_ = 0;
};

// True when `dir` holds a dataset index (any version): prepare only replaces such directories.
bool looks_like_dataset(const std::filesystem::path& dir);

}  // namespace qad::data
