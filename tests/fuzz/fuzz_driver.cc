// A plain driver for the libFuzzer entry points (LLVMFuzzerTestOneInput), so that CI runs them on any compiler
// within a fixed budget: the seed inputs, then --iterations seeded mutations of them (byte edits, JSON-aware
// value swaps, splices, truncations). A failing input is written to fuzz-failure-<target>.bin for replay
// (`<driver> --replay FILE`, or the libFuzzer build with FILE as its argument).
#include <signal.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {
namespace fs = std::filesystem;

std::string g_failure_file;
std::string g_current;  // the input under test, dumped by the crash handler

void dump_current() {
  const int fd = ::open(g_failure_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  ssize_t ignored = ::write(fd, g_current.data(), g_current.size());
  (void)ignored;
  ::close(fd);
}

void on_crash(int sig) {
  dump_current();
  static const char kMsg[] = "fuzz driver: the target crashed; input written to the failure file\n";
  ssize_t ignored = ::write(STDERR_FILENO, kMsg, sizeof(kMsg) - 1);
  (void)ignored;
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Tokens that move a JSON parser or a format check into its edge cases.
const std::vector<std::string> kInteresting = {
    "{", "}", "[", "]", ",", ":", "\"", "\\", "null", "true", "false", "0", "-1", "1e309", "-0", "4294967296",
    "9223372036854775808", "1.5", "\"\"", "[]", "{}", "\\u0000", "\\ud800", "\xff", "\xc3", "\xe2\x82", "\n", " ",
    "\"type\"", "\"BPE\"", "\"ByteLevel\"", "\"Sequence\"", "\"Regex\"", "\"String\"", "\"text\"", "\"messages\"",
    "\"role\"", "\"content\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"F32\"", "\"BF16\"", "\"I64\""};

// A random JSON value, small.
nlohmann::json random_value(std::mt19937_64& rng, int depth = 0) {
  switch (rng() % (depth > 2 ? 6 : 8)) {
    case 0: return nullptr;
    case 1: return static_cast<bool>(rng() & 1);
    case 2: return static_cast<int64_t>(rng()) >> (rng() % 64);
    case 3: return -static_cast<int64_t>(rng() % 5);
    case 4: return std::ldexp(static_cast<double>(rng() % 1000) - 500, static_cast<int>(rng() % 80) - 40);
    case 5: return kInteresting[rng() % kInteresting.size()];
    case 6: {
      auto a = nlohmann::json::array();
      for (uint64_t i = 0, n = rng() % 4; i < n; ++i) a.push_back(random_value(rng, depth + 1));
      return a;
    }
    default: {
      auto o = nlohmann::json::object();
      for (uint64_t i = 0, n = rng() % 4; i < n; ++i) o[kInteresting[rng() % kInteresting.size()]] = random_value(rng, depth + 1);
      return o;
    }
  }
}

// Replaces, removes or adds one node somewhere in a parsed JSON document.
void mutate_json(nlohmann::json& j, std::mt19937_64& rng) {
  nlohmann::json* node = &j;
  for (int d = 0; d < 8; ++d) {
    if (node->is_object() && !node->empty() && rng() % 3 != 0) {
      auto it = node->begin();
      std::advance(it, static_cast<long>(rng() % node->size()));
      node = &it.value();
    } else if (node->is_array() && !node->empty() && rng() % 3 != 0) {
      node = &(*node)[rng() % node->size()];
    } else {
      break;
    }
  }
  const auto op = rng() % 4;
  if (op == 0 && node->is_object() && !node->empty()) {
    auto it = node->begin();
    std::advance(it, static_cast<long>(rng() % node->size()));
    node->erase(it);
  } else if (op == 1 && node->is_array() && !node->empty()) {
    node->erase(node->begin() + static_cast<long>(rng() % node->size()));
  } else if (op == 2 && node->is_object()) {
    (*node)[kInteresting[rng() % kInteresting.size()]] = random_value(rng);
  } else {
    *node = random_value(rng);
  }
}

void mutate_bytes(std::string& s, std::mt19937_64& rng) {
  const auto pos = [&] { return s.empty() ? size_t{0} : static_cast<size_t>(rng() % (s.size() + 1)); };
  switch (rng() % 7) {
    case 0:
      if (!s.empty()) s[rng() % s.size()] ^= static_cast<char>(1u << (rng() % 8));
      break;
    case 1:
      if (!s.empty()) s[rng() % s.size()] = static_cast<char>(rng());
      break;
    case 2: s.insert(pos(), kInteresting[rng() % kInteresting.size()]); break;
    case 3: {  // delete a range
      const size_t a = pos(), n = static_cast<size_t>(rng() % 16);
      if (a < s.size()) s.erase(a, n);
      break;
    }
    case 4: {  // duplicate a range
      const size_t a = pos(), n = static_cast<size_t>(rng() % 64);
      if (a < s.size()) s.insert(pos(), s.substr(a, n));
      break;
    }
    case 5: s.resize(pos()); break;  // truncate
    default: {  // overwrite 8 bytes with an integer (header lengths, offsets)
      const uint64_t v = rng() % 2 ? rng() : rng() % 256;
      const size_t a = pos();
      if (a + 8 <= s.size()) std::memcpy(s.data() + a, &v, 8);
      break;
    }
  }
}

std::string mutate(const std::vector<std::string>& seeds, std::mt19937_64& rng) {
  std::string s = seeds[rng() % seeds.size()];
  if (rng() % 8 == 0) {  // splice with another seed
    const auto& t = seeds[rng() % seeds.size()];
    s = s.substr(0, rng() % (s.size() + 1)) + t.substr(rng() % (t.size() + 1));
  }
  // Mostly JSON-aware edits where the seed is JSON (they get past the parser into the format's checks).
  auto j = nlohmann::json::parse(s, nullptr, false);
  if (!j.is_discarded() && rng() % 4 != 0) {
    for (uint64_t i = 0, n = 1 + rng() % 3; i < n; ++i) mutate_json(j, rng);
    s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (rng() % 4 == 0) mutate_bytes(s, rng);
    return s;
  }
  for (uint64_t i = 0, n = 1 + rng() % 6; i < n; ++i) mutate_bytes(s, rng);
  return s;
}

int usage() {
  std::fprintf(stderr, "usage: fuzz_<target> [--iterations N] [--seed S] [--max-seconds T] SEED_FILE_OR_DIR...\n"
                       "       fuzz_<target> --replay FILE\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string target = fs::path(argv[0]).filename().string();
  g_failure_file = "fuzz-failure-" + target + ".bin";
  int64_t iterations = 2000;
  uint64_t seed = 1;
  double max_seconds = 20;
  std::vector<std::string> seeds;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iterations" && i + 1 < argc) {
      iterations = std::strtoll(argv[++i], nullptr, 10);
    } else if (a == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--max-seconds" && i + 1 < argc) {
      max_seconds = std::strtod(argv[++i], nullptr);
    } else if (a == "--replay" && i + 1 < argc) {
      const auto in = slurp(argv[++i]);
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(in.data()), in.size());
      std::printf("replayed %zu bytes: no failure\n", in.size());
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      return usage();
    } else if (fs::is_directory(a)) {
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(a)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
      for (const auto& f : files) seeds.push_back(slurp(f));
    } else if (fs::is_regular_file(a)) {
      seeds.push_back(slurp(a));
    } else {
      std::fprintf(stderr, "%s: seed %s does not exist\n", target.c_str(), a.c_str());
      return 2;
    }
  }
  if (const char* s = std::getenv("QAD_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  if (seeds.empty()) return usage();
  for (int sig : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) ::signal(sig, on_crash);

  std::mt19937_64 rng(seed);
  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0;
  try {
    for (int64_t i = -static_cast<int64_t>(seeds.size()); i < iterations; ++i, ++done) {
      g_current = i < 0 ? seeds[static_cast<size_t>(i + static_cast<int64_t>(seeds.size()))] : mutate(seeds, rng);
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(g_current.data()), g_current.size());
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > max_seconds) break;
    }
  } catch (const std::exception& e) {
    dump_current();
    std::fprintf(stderr, "%s: input %lld (seed %llu) threw %s; written to %s\n", target.c_str(),
                 static_cast<long long>(done), static_cast<unsigned long long>(seed), e.what(), g_failure_file.c_str());
    return 1;
  }
  std::printf("%s: %lld inputs (%zu seeds, seed %llu) in %.1f s, no failure\n", target.c_str(),
              static_cast<long long>(done), seeds.size(), static_cast<unsigned long long>(seed),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}
