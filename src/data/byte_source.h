// Decompressed bytes of an input file: plain, .xz (through the `xz -dc` binary, since liblzma headers are
// not on every machine) or .zst (streaming libzstd). Reports how much of the file on disk is consumed so
// that progress and ETA can be computed for compressed inputs too.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>

namespace qad::data {

enum class Compression { none, xz, zstd };

// By the last extension: ".xz" → xz, ".zst"/".zstd" → zstd, anything else → none.
Compression compression_of(const std::filesystem::path& path);

// The path without its compression suffix ("a.jsonl.xz" → "a.jsonl").
std::filesystem::path strip_compression_suffix(const std::filesystem::path& path);

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Fills up to n bytes; returns 0 only at the end of the data. Throws qad::Error naming the file on a
  // read or decompression failure (including a truncated or corrupt compressed stream).
  virtual size_t read(char* buf, size_t n) = 0;
  // Bytes of the file on disk consumed so far (compressed bytes for compressed files).
  virtual uint64_t consumed_bytes() const = 0;
};

std::unique_ptr<ByteSource> open_byte_source(const std::filesystem::path& path);

}  // namespace qad::data
