// The token shard file: one header, then the document table, the tokens and the loss-mask bitmap, each
// at a 64-byte aligned offset so that a memory map can use them in place. docs/data.md has the layout.
#pragma once
#include <bit>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace qad::data {

static_assert(std::endian::native == std::endian::little, "shards are little-endian; add byte swaps for this host");

inline constexpr char kShardMagic[8] = {'Q', 'A', 'D', 'T', 'O', 'K', 'S', '1'};
inline constexpr uint32_t kShardVersion = 1;

// Bytes [0, 128) of a shard file.
struct ShardHeader {
  char magic[8];            // "QADTOKS1"
  uint32_t version;         // kShardVersion
  uint32_t header_bytes;    // sizeof(ShardHeader) = 128
  uint64_t num_documents;   // n
  uint64_t num_tokens;      // N
  uint64_t offsets_at;      // uint64[n + 1]: first token of each document; [0] = 0, [n] = N, non-decreasing
  uint64_t sources_at;      // DocumentSource[n]
  uint64_t tokens_at;       // uint32[N] token ids
  uint64_t mask_at;         // uint8[ceil(N / 8)]: bit (i % 8) of byte i / 8 = loss mask of token i
  uint64_t file_bytes;      // size of the whole file, to detect truncation
  uint64_t supervised_tokens;  // number of mask bits set
  uint8_t reserved[48];     // zero
};
static_assert(sizeof(ShardHeader) == 128);

// Where a document came from, so a batch row can be traced back to file:line.
struct DocumentSource {
  uint32_t input_index;  // index into the dataset index's "inputs" list
  uint32_t flags;        // bit 0: chat document (loss mask from the chat template); others zero
  uint64_t line;         // 1-based line in that input (1 for a whole plain-text file)
};
static_assert(sizeof(DocumentSource) == 16);
inline constexpr uint32_t kDocumentIsChat = 1;

inline uint64_t align64(uint64_t x) { return (x + 63) & ~uint64_t{63}; }

// Accumulates documents in memory and writes them as one shard file.
class ShardWriter {
 public:
  void add(std::span<const int32_t> ids, std::span<const uint8_t> loss_mask, DocumentSource source);
  uint64_t num_documents() const { return sources_.size(); }
  uint64_t num_tokens() const { return tokens_.size(); }
  uint64_t supervised_tokens() const { return supervised_; }
  // Writes the shard to `path` and clears the writer.
  void write(const std::filesystem::path& path);

 private:
  std::vector<uint64_t> offsets_{0};
  std::vector<DocumentSource> sources_;
  std::vector<uint32_t> tokens_;
  std::vector<uint8_t> mask_;  // bitmap under construction
  uint64_t supervised_ = 0;
};

// A shard file mapped read-only, its header and tables checked against the file size on open.
class MappedShard {
 public:
  explicit MappedShard(const std::filesystem::path& path);
  ~MappedShard();
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  const ShardHeader& header() const { return *reinterpret_cast<const ShardHeader*>(base_); }
  uint64_t num_documents() const { return header().num_documents; }
  uint64_t num_tokens() const { return header().num_tokens; }
  const uint64_t* offsets() const { return reinterpret_cast<const uint64_t*>(base_ + header().offsets_at); }
  const DocumentSource* sources() const {
    return reinterpret_cast<const DocumentSource*>(base_ + header().sources_at);
  }
  const uint32_t* tokens() const { return reinterpret_cast<const uint32_t*>(base_ + header().tokens_at); }
  const uint8_t* mask_bits() const { return base_ + header().mask_at; }
  bool mask(uint64_t token) const { return (mask_bits()[token >> 3] >> (token & 7)) & 1; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace qad::data
