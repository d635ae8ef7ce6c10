// Helpers of the CLI robustness suite: run the built `qad` binary as a user would (a subprocess with its own
// working directory, output captured), judge its messages, and build the inputs the tests need (a small
// stories corpus, copies of the stories260K teacher with tampered weights).
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace qad::cli_test {
namespace fs = std::filesystem;

inline fs::path source_dir() { return QAD_SOURCE_DIR; }
inline fs::path shared_dir() {
  if (const char* s = std::getenv("QAD_SHARED_DIR")) return s;
  return source_dir().parent_path() / "shared";
}
inline fs::path stories260k() { return shared_dir() / "models" / "stories260K"; }

inline std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void write(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << bytes;
}

// Starts `qad args...` in `cwd` (empty: the test's), stdout and stderr into `log`. Returns the pid.
inline pid_t spawn_qad(const std::vector<std::string>& args, const fs::path& log, const fs::path& cwd = {}) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(126);
    FILE* out = std::freopen(log.c_str(), "w", stdout);
    (void)out;
    ::dup2(::fileno(stdout), ::fileno(stderr));
    std::vector<std::string> copy = args;
    std::string bin = QAD_BINARY;
    std::vector<char*> argv{bin.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

// `base` with the flags of `more`: a flag already in `base` gets the new value (a single-value option may not
// be given twice); the others, and value-less flags, are appended.
inline std::vector<std::string> with_flags(std::vector<std::string> base, const std::vector<std::string>& more) {
  for (size_t i = 0; i < more.size(); ++i) {
    auto it = std::find(base.begin(), base.end(), more[i]);
    if (it != base.end() && it + 1 != base.end() && more[i].rfind("--", 0) == 0 && more[i] != "--set" &&
        i + 1 < more.size()) {
      *(it + 1) = more[++i];
    } else {
      base.push_back(more[i]);
    }
  }
  return base;
}

struct Outcome {
  int status = 0;   // raw wait status
  std::string log;  // stdout + stderr
  bool exited(int code) const { return WIFEXITED(status) && WEXITSTATUS(status) == code; }
  bool killed_by(int sig) const { return WIFSIGNALED(status) && WTERMSIG(status) == sig; }
  std::string describe() const {
    std::string s = WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                      : "signal " + std::to_string(WTERMSIG(status));
    return s + "; output:\n" + log;
  }
  // The lines that start with `prefix`.
  std::vector<std::string> lines_with(const std::string& prefix) const {
    std::vector<std::string> out;
    std::istringstream in(log);
    for (std::string l; std::getline(in, l);) {
      if (l.rfind(prefix, 0) == 0) out.push_back(l);
    }
    return out;
  }
};

inline int wait_pid(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

inline Outcome run_qad(const std::vector<std::string>& args, const fs::path& log, const fs::path& cwd = {}) {
  Outcome o;
  o.status = wait_pid(spawn_qad(args, log, cwd));
  o.log = slurp(log);
  return o;
}

// A user mistake: exit status 1 and exactly one "qad: error:" line that contains every `needle`; no LibTorch
// trace, no "internal error".
inline ::testing::AssertionResult is_user_error(const Outcome& o, const std::vector<std::string>& needles) {
  if (!o.exited(1)) return ::testing::AssertionFailure() << "expected exit 1, got " << o.describe();
  const auto errors = o.lines_with("qad: error:");
  if (errors.size() != 1) return ::testing::AssertionFailure() << errors.size() << " error lines in:\n" << o.log;
  for (const char* bad : {"internal error", "Exception raised from", "frame #"}) {
    if (o.log.find(bad) != std::string::npos) return ::testing::AssertionFailure() << "'" << bad << "' in:\n" << o.log;
  }
  for (const auto& n : needles) {
    if (errors[0].find(n) == std::string::npos) {
      return ::testing::AssertionFailure() << "the error line lacks '" << n << "': " << errors[0];
    }
  }
  return ::testing::AssertionSuccess();
}

// Short generated stories in TinyStories' style (the teacher's domain), seeded.
inline void write_stories(const fs::path& file, int docs = 240, uint32_t seed = 1234) {
  std::mt19937 rng(seed);
  const std::vector<std::string> names = {"Lily", "Tom", "Sue", "Ben", "Mia", "Max"};
  const std::vector<std::string> things = {"ball", "cat", "tree", "cake", "boat", "dog", "flower"};
  const std::vector<std::string> feel = {"happy", "sad", "tired", "excited", "scared"};
  std::ofstream f(file);
  for (int d = 0; d < docs; ++d) {
    auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
    const std::string a = pick(names), b = pick(names), t = pick(things);
    f << "{\"text\": \"Once upon a time, there was a little girl named " << a << ". " << a << " had a big " << t
      << ". One day, " << a << " saw " << b << " in the park. " << b << " was " << pick(feel) << ". " << a
      << " said, \\\"Do you want to play with my " << t << "?\\\" " << b << " smiled and they played all day.\"}\n";
  }
}

// Copies stories260K to `dir` (config, weights, tokenizer) and sets every element of tensor `name` to `value`
// in the copy's model.safetensors (F32), so that a test gets NaN / Inf / huge weights where it wants them.
inline void tampered_teacher(const fs::path& dir, const std::string& name, float value, bool with_tokenizer = true) {
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "generation_config.json"}) {
    if (!with_tokenizer && std::string(f).rfind("tokenizer", 0) == 0) continue;
    fs::copy_file(stories260k() / f, dir / f, fs::copy_options::overwrite_existing);
    fs::permissions(dir / f, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
  }
  if (name.empty()) return;
  std::string bytes = slurp(dir / "model.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  ASSERT_TRUE(header.contains(name)) << name;
  ASSERT_EQ(header[name]["dtype"], "F32");
  const auto begin = header[name]["data_offsets"][0].get<uint64_t>(), end = header[name]["data_offsets"][1].get<uint64_t>();
  for (uint64_t at = 8 + n + begin; at < 8 + n + end; at += 4) std::memcpy(bytes.data() + at, &value, 4);
  write(dir / "model.safetensors", bytes);
}

// A pid that no process has: a child that has exited and been reaped.
inline pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  wait_pid(pid);
  return pid;
}

// Waits until `pred` holds or `seconds` pass; returns whether it held.
template <typename Pred> bool wait_until(Pred pred, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return pred();
}

// Every regular file under `dir`, relative path -> bytes.
inline std::map<std::string, std::string> tree_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[e.path().lexically_relative(dir).string()] = slurp(e.path());
  }
  return out;
}

// A per-process scratch directory for one test binary.
inline fs::path scratch_root(const std::string& name) {
  auto root = fs::temp_directory_path() / ("qad_cli_" + name + "_" + std::to_string(::getpid()));
  fs::create_directories(root);
  return root;
}

}  // namespace qad::cli_test
