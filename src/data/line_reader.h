// Lines of a (possibly compressed) text file, numbered from 1, for inputs reported as file:line.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "data/byte_source.h"

namespace qad::data {

class LineReader {
 public:
  explicit LineReader(const std::filesystem::path& path);

  // The next line without its "\n" (and without a "\r" before it); the view stays valid until the next
  // call. A last line without a final newline is returned too. Returns false at the end of the file.
  bool next(std::string_view& line);
  int64_t line_number() const { return line_number_; }  // of the line last returned (1-based)
  uint64_t consumed_bytes() const { return source_->consumed_bytes(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  bool fill();

  std::filesystem::path path_;
  std::unique_ptr<ByteSource> source_;
  std::string buf_;
  size_t begin_ = 0, end_ = 0;  // unread bytes are buf_[begin_, end_)
  bool eof_ = false;
  int64_t line_number_ = 0;
};

// The whole decompressed content of a file.
std::string read_all(const std::filesystem::path& path);

}  // namespace qad::data
