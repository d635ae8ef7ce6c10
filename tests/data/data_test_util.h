// Helpers for the data tests (torch-free): a scratch directory per test, file writers, compression of
// fixtures with the xz binary and with libzstd, and the path to ../shared.
#pragma once
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "util/remove_tree.h"
#include "util/atomic_file.h"

extern char** environ;

namespace qad::testing {
namespace fs = std::filesystem;

inline fs::path shared_data_dir() {
  if (const char* s = std::getenv("QAD_SHARED_DIR")) return s;
  return fs::path(QAD_SOURCE_DIR).parent_path() / "shared";
}

inline uint64_t data_test_seed(uint64_t fallback = 20261123) {
  if (const char* s = std::getenv("QAD_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return fallback;
}

// A fresh directory under the system temp area, removed when the object goes away (kept when
// QAD_KEEP_TEST_DIRS is set, to look at what a test wrote).
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "suite";
    path_ = fs::temp_directory_path() / ("qad-data-test-" + std::to_string(::getpid()) + "-" + name);
    ::qad::remove_tree(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    if (std::getenv("QAD_KEEP_TEST_DIRS") != nullptr) return;
    std::error_code ec;
    ::qad::remove_tree(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Runs argv without a shell; returns the exit status.
inline int run_program(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  if (::posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// path.xz next to path (the original is kept).
inline fs::path xz_compress(const fs::path& path) {
  EXPECT_EQ(run_program({"xz", "-k", "-f", "-1", path.string()}), 0) << "xz failed on " << path;
  return path.string() + ".xz";
}

// path.zst next to path, written with libzstd as `frames` concatenated frames (zstd streams may hold many).
inline fs::path zstd_compress(const fs::path& path, int frames = 1) {
  const std::string data = qad::read_file(path);
  std::string out;
  const size_t step = (data.size() + frames - 1) / std::max(frames, 1);
  for (size_t at = 0; at < data.size() || (at == 0 && data.empty()); at += std::max<size_t>(step, 1)) {
    const size_t n = std::min(step, data.size() - at);
    std::string buf(ZSTD_compressBound(n), '\0');
    size_t got = ZSTD_compress(buf.data(), buf.size(), data.data() + at, n, 3);
    EXPECT_FALSE(ZSTD_isError(got));
    out.append(buf.data(), got);
    if (data.empty()) break;
  }
  fs::path z = path.string() + ".zst";
  write_bytes(z, out);
  return z;
}

}  // namespace qad::testing
