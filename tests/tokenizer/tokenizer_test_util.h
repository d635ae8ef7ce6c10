// Helpers for the tokenizer tests (torch-free, unlike tests/common/test_util.h): paths to ../shared,
// tokenizer folders with their .xz files decompressed once into the build dir, reading .xz via `xz -dc`.
#pragma once
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace qad::testing {

// $QAD_SHARED_DIR, else ../shared next to the repo, else .shared/ inside it (the GPU machine's copy).
inline std::filesystem::path tok_shared_dir() {
  if (const char* s = std::getenv("QAD_SHARED_DIR")) return s;
  const std::filesystem::path src(QAD_SOURCE_DIR);
  if (!std::filesystem::exists(src.parent_path() / "shared") && std::filesystem::exists(src / ".shared"))
    return src / ".shared";
  return src.parent_path() / "shared";
}

// Skips (visibly, with the reason) where the shared data is not there at all, as on a bare clone; a shared
// folder with missing or different files still fails the tests.
#define QAD_REQUIRE_SHARED()                                                                         \
  do {                                                                                               \
    if (!std::filesystem::exists(::qad::testing::tok_shared_dir() / "tokenizers"))                  \
      GTEST_SKIP() << "shared data not found at " << ::qad::testing::tok_shared_dir()               \
                   << " (set QAD_SHARED_DIR to the shared/ folder)";                                 \
  } while (0)

// Whole stdout of a shell command; fails the test on a non-zero exit.
inline std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    ADD_FAILURE() << "cannot run: " << cmd;
    return out;
  }
  char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  EXPECT_EQ(rc, 0) << "command failed: " << cmd;
  return out;
}

inline std::string read_xz(const std::filesystem::path& p) { return run_capture("xz -dc '" + p.string() + "'"); }

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A folder with tokenizer.json (decompressed from tokenizer.json.xz when that is how shared/ has it) and
// tokenizer_config.json for shared/tokenizers/<name>. Safe when test processes run concurrently.
inline std::filesystem::path tokenizer_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path src = tok_shared_dir() / "tokenizers" / name;
  if (!fs::exists(src / "tokenizer.json.xz")) return src;
  const fs::path dst = fs::path(QAD_BINARY_DIR) / "test_data" / "tokenizers" / name;
  if (fs::exists(dst / "tokenizer.json") && fs::exists(dst / "tokenizer_config.json")) return dst;
  fs::create_directories(dst);
  const std::string tag = ".tmp-" + std::to_string(getpid());
  const std::string json = read_xz(src / "tokenizer.json.xz");
  {
    std::ofstream(dst / ("tokenizer.json" + tag), std::ios::binary) << json;
  }
  fs::rename(dst / ("tokenizer.json" + tag), dst / "tokenizer.json");
  fs::copy_file(src / "tokenizer_config.json", dst / ("tokenizer_config.json" + tag), fs::copy_options::overwrite_existing);
  fs::rename(dst / ("tokenizer_config.json" + tag), dst / "tokenizer_config.json");
  return dst;
}

inline std::vector<nlohmann::json> read_jsonl(const std::string& text) {
  std::vector<nlohmann::json> rows;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

}  // namespace qad::testing
