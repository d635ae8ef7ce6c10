// Safetensors reading without torch: the header parser (the fuzzed surface), an mmap-backed file whose
// tensors are zero-copy byte spans, and the sharded checkpoint (model.safetensors.index.json) on top.
// Format notes and the list of checks: docs/io.md.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qad::io {

// The element types qad reads and writes; names as in the safetensors header.
enum class DType { F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, I8, U8, BOOL };

std::size_t dtype_size(DType d);
std::string_view dtype_name(DType d);
std::optional<DType> parse_dtype(std::string_view name);
// "F32, F16, ..." for error messages.
std::string supported_dtypes();

// One tensor of a header. Offsets are relative to the start of the data section.
struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

struct Header {
  std::vector<TensorInfo> tensors;  // in data order (ascending begin)
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + header length: where the data section starts in the file
};

// Largest header accepted (the reference implementation's limit).
inline constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// Parses and validates a whole safetensors file held in memory (`file` = every byte of it). Throws
// qad::Error "<label>: <problem>" on any malformation; never reads outside `file`. This is the function
// the fuzz target drives.
Header parse_safetensors(std::string_view file, const std::string& label);

// A read-only mmap of a file (MAP_PRIVATE, so a consumer that writes into a view gets private
// copy-on-write pages instead of a crash or a modified checkpoint).
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }
  std::byte* writable_data() const { return static_cast<std::byte*>(data_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

// One .safetensors file, mapped. Spans returned stay valid while the SafetensorsFile lives (hold the
// shared_ptr).
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return map_.path(); }
  const Header& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const TensorInfo* find(std::string_view name) const;
  // The tensor's bytes (a view into the mapping); `mutable_data` points at the same private pages.
  std::span<const std::byte> bytes(const TensorInfo& t) const;
  std::byte* mutable_data(const TensorInfo& t) const;

  explicit SafetensorsFile(const std::filesystem::path& path);  // use open()

 private:
  MappedFile map_;
  Header header_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

// A checkpoint: a directory with model.safetensors, or with model.safetensors.index.json and its shards,
// or a single .safetensors file. Every tensor name is unique across shards.
class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir_or_file);

  struct Entry {
    std::shared_ptr<SafetensorsFile> file;
    const TensorInfo* info;
  };
  const Entry* find(std::string_view name) const;
  const Entry& at(std::string_view name) const;  // throws naming the checkpoint when absent
  std::vector<std::string> names() const;        // sorted
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::filesystem::path& location() const { return location_; }

 private:
  std::filesystem::path location_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace qad::io
