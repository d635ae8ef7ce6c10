#include "data/line_reader.h"

#include <cstring>

namespace qad::data {

LineReader::LineReader(const std::filesystem::path& path) : path_(path), source_(open_byte_source(path)) {
  buf_.resize(1 << 20);
}

bool LineReader::fill() {
  if (eof_) return false;
  if (begin_ > 0) {  // move the partial line to the front
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (end_ == buf_.size()) buf_.resize(buf_.size() * 2);  // a line longer than the buffer
  size_t got = source_->read(buf_.data() + end_, buf_.size() - end_);
  if (got == 0) {
    eof_ = true;
    return false;
  }
  end_ += got;
  return true;
}

bool LineReader::next(std::string_view& line) {
  size_t scanned = begin_;
  for (;;) {
    const void* nl = std::memchr(buf_.data() + scanned, '\n', end_ - scanned);
    if (nl != nullptr) {
      size_t at = static_cast<const char*>(nl) - buf_.data();
      size_t len = at - begin_;
      if (len > 0 && buf_[at - 1] == '\r') --len;
      line = std::string_view(buf_.data() + begin_, len);
      begin_ = at + 1;
      ++line_number_;
      return true;
    }
    const size_t unread_scanned = end_ - begin_;
    if (!fill()) break;
    scanned = begin_ + unread_scanned;
  }
  if (begin_ == end_) return false;
  size_t len = end_ - begin_;
  if (buf_[end_ - 1] == '\r') --len;
  line = std::string_view(buf_.data() + begin_, len);
  begin_ = end_;
  ++line_number_;
  return true;
}

std::string read_all(const std::filesystem::path& path) {
  auto source = open_byte_source(path);
  std::string out;
  size_t size = 0;
  out.resize(1 << 16);
  for (;;) {
    if (size == out.size()) out.resize(out.size() * 2);
    size_t got = source->read(out.data() + size, out.size() - size);
    if (got == 0) break;
    size += got;
  }
  out.resize(size);
  return out;
}

}  // namespace qad::data
