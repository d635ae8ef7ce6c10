#include "data/shard_format.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "util/error.h"

namespace qad::data {
namespace fs = std::filesystem;

void ShardWriter::add(std::span<const int32_t> ids, std::span<const uint8_t> loss_mask, DocumentSource source) {
  QAD_CHECK(loss_mask.empty() || loss_mask.size() == ids.size(), "loss mask has {} entries for {} tokens",
            loss_mask.size(), ids.size());
  const uint64_t first = tokens_.size();
  // No exact reserve here: reserving first + n on every document defeats the vector's geometric growth
  // and made preparing a dataset quadratic (a reallocation and full copy per document).
  mask_.resize((first + ids.size() + 7) / 8, 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    tokens_.push_back(static_cast<uint32_t>(ids[i]));
    if (loss_mask.empty() || loss_mask[i] != 0) {
      const uint64_t t = first + i;
      mask_[t >> 3] = static_cast<uint8_t>(mask_[t >> 3] | (1u << (t & 7)));
      ++supervised_;
    }
  }
  offsets_.push_back(tokens_.size());
  sources_.push_back(source);
}

void ShardWriter::write(const fs::path& path) {
  ShardHeader h{};
  std::memcpy(h.magic, kShardMagic, sizeof h.magic);
  h.version = kShardVersion;
  h.header_bytes = sizeof(ShardHeader);
  h.num_documents = sources_.size();
  h.num_tokens = tokens_.size();
  h.offsets_at = align64(sizeof(ShardHeader));
  h.sources_at = align64(h.offsets_at + offsets_.size() * sizeof(uint64_t));
  h.tokens_at = align64(h.sources_at + sources_.size() * sizeof(DocumentSource));
  h.mask_at = align64(h.tokens_at + tokens_.size() * sizeof(uint32_t));
  h.file_bytes = h.mask_at + mask_.size();
  h.supervised_tokens = supervised_;

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  QAD_CHECK(out.good(), "cannot create shard {}: {}", path.string(), std::strerror(errno));
  uint64_t written = 0;
  auto put = [&](uint64_t at, const void* data, uint64_t bytes) {
    static const char zeros[64] = {};
    while (written < at) {  // zero padding up to the aligned section start
      uint64_t n = std::min<uint64_t>(at - written, sizeof zeros);
      out.write(zeros, static_cast<std::streamsize>(n));
      written += n;
    }
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    written += bytes;
  };
  put(0, &h, sizeof h);
  put(h.offsets_at, offsets_.data(), offsets_.size() * sizeof(uint64_t));
  put(h.sources_at, sources_.data(), sources_.size() * sizeof(DocumentSource));
  put(h.tokens_at, tokens_.data(), tokens_.size() * sizeof(uint32_t));
  put(h.mask_at, mask_.data(), mask_.size());
  out.flush();
  QAD_CHECK(out.good() && written == h.file_bytes, "cannot write shard {} ({} bytes): {}; is the disk full?",
            path.string(), h.file_bytes, std::strerror(errno));
  *this = ShardWriter();
}

MappedShard::MappedShard(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  QAD_CHECK(fd >= 0, "cannot open shard {}: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat shard {}: {}", path.string(), std::strerror(errno));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < sizeof(ShardHeader)) {
    ::close(fd);
    fail("shard {} is {} bytes, shorter than its 128-byte header: the file is truncated; prepare the data again",
         path.string(), size_);
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  QAD_CHECK(p != MAP_FAILED, "cannot map shard {}: {}", path.string(), std::strerror(errno));
  base_ = static_cast<const uint8_t*>(p);
  try {
    const auto& h = header();
    QAD_CHECK(std::memcmp(h.magic, kShardMagic, sizeof h.magic) == 0,
              "{} is not a qad token shard (bad magic bytes)", path.string());
    QAD_CHECK(h.version == kShardVersion, "shard {} has format version {}; this build reads version {}",
              path.string(), h.version, kShardVersion);
    QAD_CHECK(h.file_bytes == size_, "shard {} should be {} bytes but is {}: the file is truncated or damaged",
              path.string(), h.file_bytes, size_);
    const uint64_t n = h.num_documents, N = h.num_tokens;
    // Each section must lie inside the file, in order; sizes computed with overflow in mind.
    const bool sane = n < (uint64_t{1} << 40) && N < (uint64_t{1} << 40) && h.header_bytes == sizeof(ShardHeader) &&
                      h.offsets_at >= sizeof(ShardHeader) && h.offsets_at % 8 == 0 &&
                      h.sources_at >= h.offsets_at + (n + 1) * 8 && h.sources_at % 8 == 0 &&
                      h.tokens_at >= h.sources_at + n * sizeof(DocumentSource) && h.tokens_at % 4 == 0 &&
                      h.mask_at >= h.tokens_at + N * 4 && h.mask_at + (N + 7) / 8 <= size_;
    QAD_CHECK(sane, "shard {} has an inconsistent header (sections overlap or lie outside the file)", path.string());
    const uint64_t* off = offsets();
    QAD_CHECK(off[0] == 0 && off[n] == N, "shard {}: document offsets do not span the {} tokens", path.string(), N);
    for (uint64_t i = 0; i < n; ++i) {
      QAD_CHECK(off[i] <= off[i + 1], "shard {}: document {} has a negative length", path.string(), i);
    }
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(base_), size_);
    throw;
  }
}

MappedShard::~MappedShard() {
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
}

}  // namespace qad::data
