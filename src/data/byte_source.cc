#include "data/byte_source.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "util/error.h"

extern char** environ;

namespace qad::data {
namespace fs = std::filesystem;

Compression compression_of(const fs::path& path) {
  const auto ext = path.extension().string();
  if (ext == ".xz") return Compression::xz;
  if (ext == ".zst" || ext == ".zstd") return Compression::zstd;
  return Compression::none;
}

fs::path strip_compression_suffix(const fs::path& path) {
  if (compression_of(path) == Compression::none) return path;
  auto out = path;
  out.replace_extension();
  return out;
}

namespace {

int open_input(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  QAD_CHECK(fd >= 0, "cannot open input {}: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail("input {} is a directory; pass the files inside it", path.string());
  }
  return fd;
}

size_t read_fd(int fd, char* buf, size_t n, const fs::path& path) {
  for (;;) {
    ssize_t got = ::read(fd, buf, n);
    if (got >= 0) return static_cast<size_t>(got);
    if (errno == EINTR) continue;
    fail("cannot read {}: {}", path.string(), std::strerror(errno));
  }
}

uint64_t fd_position(int fd) {
  off_t pos = ::lseek(fd, 0, SEEK_CUR);
  return pos < 0 ? 0 : static_cast<uint64_t>(pos);
}

class PlainSource final : public ByteSource {
 public:
  explicit PlainSource(fs::path path) : path_(std::move(path)), fd_(open_input(path_)) {}
  ~PlainSource() override { ::close(fd_); }
  size_t read(char* buf, size_t n) override {
    size_t got = read_fd(fd_, buf, n, path_);
    consumed_ += got;
    return got;
  }
  uint64_t consumed_bytes() const override { return consumed_; }

 private:
  fs::path path_;
  int fd_;
  uint64_t consumed_ = 0;
};

// `xz -dc` reading the file on its stdin. The child shares our open file description, so lseek on our
// copy of the descriptor tells how far xz has read (for progress) without a feeder thread.
class XzSource final : public ByteSource {
 public:
  explicit XzSource(fs::path path) : path_(std::move(path)), file_fd_(open_input(path_)) {
    int out[2], err[2];
    QAD_CHECK(::pipe2(out, O_CLOEXEC) == 0 && ::pipe2(err, O_CLOEXEC) == 0, "cannot create a pipe for xz: {}",
              std::strerror(errno));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, file_fd_, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err[1], 2);
    char arg0[] = "xz", arg1[] = "-dc";
    char* argv[] = {arg0, arg1, nullptr};
    int rc = ::posix_spawnp(&pid_, "xz", &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    if (rc != 0) {
      pid_ = -1;
      cleanup();
      fail("cannot run `xz -dc` to read {}: {}; install xz-utils (the xz binary must be on PATH)", path_.string(),
           std::strerror(rc));
    }
  }
  ~XzSource() override { cleanup(); }

  size_t read(char* buf, size_t n) override {
    if (finished_) return 0;
    size_t got = read_fd(out_fd_, buf, n, path_);
    if (got == 0) finish();
    return got;
  }
  uint64_t consumed_bytes() const override { return fd_position(file_fd_); }

 private:
  void finish() {
    finished_ = true;
    std::string message;
    char tmp[4096];
    for (;;) {
      ssize_t got = ::read(err_fd_, tmp, sizeof tmp);
      if (got > 0) {
        message.append(tmp, static_cast<size_t>(got));
      } else if (got < 0 && errno == EINTR) {
        continue;
      } else {
        break;
      }
    }
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) message.pop_back();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fail("cannot decompress {}: `xz -dc` failed ({}){}; the file is truncated or not xz data", path_.string(),
           WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status)) : std::string("killed by a signal"),
           message.empty() ? "" : ": " + message);
    }
  }

  void cleanup() {
    if (out_fd_ >= 0) ::close(out_fd_);
    if (err_fd_ >= 0) ::close(err_fd_);
    out_fd_ = err_fd_ = -1;
    if (pid_ > 0) {  // stopped early (an error upstream): end our own child and reap it
      ::kill(pid_, SIGTERM);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
    }
    if (file_fd_ >= 0) ::close(file_fd_);
    file_fd_ = -1;
  }

  fs::path path_;
  int file_fd_ = -1, out_fd_ = -1, err_fd_ = -1;
  pid_t pid_ = -1;
  bool finished_ = false;
};

class ZstdSource final : public ByteSource {
 public:
  explicit ZstdSource(fs::path path) : path_(std::move(path)), fd_(open_input(path_)) {
    ds_ = ZSTD_createDStream();
    QAD_CHECK(ds_ != nullptr, "cannot create a zstd decompression stream for {}", path_.string());
    ZSTD_initDStream(ds_);
    in_buf_.resize(ZSTD_DStreamInSize());
    in_ = {in_buf_.data(), 0, 0};
  }
  ~ZstdSource() override {
    ZSTD_freeDStream(ds_);
    ::close(fd_);
  }

  size_t read(char* buf, size_t n) override {
    ZSTD_outBuffer out{buf, n, 0};
    while (out.pos == 0) {
      if (in_.pos == in_.size && !input_eof_) {
        size_t got = read_fd(fd_, in_buf_.data(), in_buf_.size(), path_);
        consumed_ += got;
        in_ = {in_buf_.data(), got, 0};
        input_eof_ = got == 0;
      }
      // 0 = the last frame is decoded and flushed. Otherwise, with no input left, one more call may still
      // flush decoded bytes that did not fit the output buffer; if it gives none, the file is cut short.
      const bool no_input = input_eof_ && in_.pos == in_.size;
      if (no_input && last_ret_ == 0) return 0;
      last_ret_ = ZSTD_decompressStream(ds_, &out, &in_);
      QAD_CHECK(!ZSTD_isError(last_ret_), "cannot decompress {}: {} (near compressed byte {})", path_.string(),
                ZSTD_getErrorName(last_ret_), consumed_);
      QAD_CHECK(!no_input || out.pos > 0 || last_ret_ == 0,
                "cannot decompress {}: the zstd stream is truncated (the file ends inside a frame)", path_.string());
    }
    return out.pos;
  }
  uint64_t consumed_bytes() const override { return consumed_; }

 private:
  fs::path path_;
  int fd_;
  ZSTD_DStream* ds_ = nullptr;
  std::vector<char> in_buf_;
  ZSTD_inBuffer in_{};
  size_t last_ret_ = 0;
  bool input_eof_ = false;
  uint64_t consumed_ = 0;
};

}  // namespace

std::unique_ptr<ByteSource> open_byte_source(const fs::path& path) {
  switch (compression_of(path)) {
    case Compression::xz:
      return std::make_unique<XzSource>(path);
    case Compression::zstd:
      return std::make_unique<ZstdSource>(path);
    case Compression::none:
      break;
  }
  return std::make_unique<PlainSource>(path);
}

}  // namespace qad::data
