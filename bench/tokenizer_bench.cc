// Single-thread encode throughput of a tokenizer (default: Qwen3) on the shared corpus, in MB/s and tokens/s,
// and, with --hf, the same measurement of HF `tokenizers` (tools/bench_hf_tokenizer.py) on the same text in
// the same run, with the ratio. Both sides print an order-sensitive checksum of all ids: equal checksums mean
// identical ids on the whole corpus.
//
//   bench_tokenizer [--shared DIR] [--tokenizer DIR] [--split valid|train] [--max-mb N] [--repeats N] [--hf]
//                   [--threads N]
// DIR defaults: --shared $QAD_SHARED_DIR, else ../shared, else .shared/; --tokenizer <shared>/tokenizers/qwen3 (its .xz is
// decompressed into the build dir once).
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using qad::tokenizer::Tokenizer;

namespace {

std::string run_capture(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *rc = -1;
    return out;
  }
  char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *rc = pclose(p);
  return out;
}

std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }

uint64_t checksum(uint64_t h, const std::vector<int32_t>& ids) {
  constexpr uint64_t kMod = (uint64_t{1} << 61) - 1;
  // 128-bit product: h * 1000003 overflows 64 bits (the Python side has big integers).
  for (int32_t id : ids) h = static_cast<uint64_t>((static_cast<unsigned __int128>(h) * 1000003 + id + 1) % kMod);
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path shared = std::getenv("QAD_SHARED_DIR") ? fs::path(std::getenv("QAD_SHARED_DIR"))
                                                  : fs::path(QAD_SOURCE_DIR).parent_path() / "shared";
  if (!std::getenv("QAD_SHARED_DIR") && !fs::exists(shared) && fs::exists(fs::path(QAD_SOURCE_DIR) / ".shared"))
    shared = fs::path(QAD_SOURCE_DIR) / ".shared";  // the GPU machine's copy
  fs::path tok_dir;
  std::string split = "valid";
  double max_mb = 0;
  int repeats = 3, threads = 1;
  bool hf = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--shared") shared = next();
    else if (a == "--tokenizer") tok_dir = next();
    else if (a == "--split") split = next();
    else if (a == "--max-mb") max_mb = std::stod(next());
    else if (a == "--repeats") repeats = std::stoi(next());
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--hf") hf = true;
    else {
      std::cerr << "unknown argument " << a << " (see the comment at the top of bench/tokenizer_bench.cc)\n";
      return 2;
    }
  }
  if (tok_dir.empty()) {
    const fs::path src = shared / "tokenizers" / "qwen3";
    tok_dir = src;
    if (!fs::exists(src / "tokenizer.json")) {
      tok_dir = fs::path(QAD_BINARY_DIR) / "bench_tokenizer_files" / "qwen3";
      if (!fs::exists(tok_dir / "tokenizer.json")) {
        fs::create_directories(tok_dir);
        int rc;
        const std::string cmd = "xz -dc " + quote(src / "tokenizer.json.xz") + " > " + quote(tok_dir / "tokenizer.json.tmp") +
                                " && mv " + quote(tok_dir / "tokenizer.json.tmp") + " " + quote(tok_dir / "tokenizer.json") +
                                " && cp " + quote(src / "tokenizer_config.json") + " " + quote(tok_dir);
        run_capture(cmd, &rc);
        if (rc != 0) {
          std::cerr << "cannot decompress " << src / "tokenizer.json.xz" << "\n";
          return 1;
        }
      }
    }
  }

  // The corpus text: every document of <split> files, in a fixed order.
  std::vector<std::string> docs;
  size_t bytes = 0;
  for (const char* name : {"prose", "python", "go"}) {
    const fs::path f = shared / "corpus" / (std::string(name) + "_" + split + ".jsonl.xz");
    int rc;
    const std::string jsonl = run_capture("xz -dc " + quote(f), &rc);
    if (rc != 0) {
      std::cerr << "cannot read " << f << " (is xz installed and the path right? --shared DIR)\n";
      return 1;
    }
    size_t pos = 0;
    while (pos < jsonl.size()) {
      size_t end = jsonl.find('\n', pos);
      if (end == std::string::npos) end = jsonl.size();
      if (end > pos && (max_mb <= 0 || bytes < max_mb * 1e6)) {
        docs.push_back(nlohmann::json::parse(jsonl.substr(pos, end - pos))["text"].get<std::string>());
        bytes += docs.back().size();
      }
      pos = end + 1;
    }
  }

  const auto t_load = std::chrono::steady_clock::now();
  const Tokenizer tok = Tokenizer::load(tok_dir);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  std::printf("tokenizer %s (load %.2f s), corpus %s split: %zu documents, %.2f MB, %d thread(s)\n",
              tok_dir.string().c_str(), load_s, split.c_str(), docs.size(), bytes / 1e6, threads);

  uint64_t sum = 0;
  size_t tokens = 0;
  double first_s = 0, best_s = 1e30;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    uint64_t h = 0;
    size_t n = 0;
    const auto t0 = std::chrono::steady_clock::now();
    if (threads == 1) {
      for (const std::string& d : docs) {
        const auto ids = tok.encode(d, false);
        n += ids.size();
        h = checksum(h, ids);
      }
    } else {
      for (const auto& ids : tok.encode_batch(docs, false, threads)) {
        n += ids.size();
        h = checksum(h, ids);
      }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r == 0) first_s = s;
    best_s = std::min(best_s, s);
    sum = h;
    tokens = n;
  }
  const double mbs = bytes / 1e6 / best_s;
  std::printf("qad    : %10.2f MB/s %12.0f tokens/s (first pass %.2f MB/s)  tokens %zu  checksum %llu\n", mbs,
              tokens / best_s, bytes / 1e6 / first_s, tokens, static_cast<unsigned long long>(sum));

  if (hf) {
    int rc;
    const std::string cmd = "python3 " + quote(fs::path(QAD_SOURCE_DIR) / "tools" / "bench_hf_tokenizer.py") +
                            " --tokenizer " + quote(tok_dir) + " --shared " + quote(shared) + " --split " + split +
                            " --max-mb " + std::to_string(max_mb) + " --repeats " + std::to_string(repeats) +
                            " --threads " + std::to_string(threads);
    const std::string out = run_capture(cmd, &rc);
    const size_t at = out.rfind("HF_RESULT ");
    if (rc != 0 || at == std::string::npos) {
      std::cerr << out << "\nHF baseline failed: " << cmd << "\n";
      return 1;
    }
    const auto res = nlohmann::json::parse(out.substr(at + 10, out.find('\n', at) - at - 10));
    const double hf_mbs = res["mb_per_s"].get<double>();
    std::printf("HF     : %10.2f MB/s %12.0f tokens/s (first pass %.2f MB/s)  tokens %llu  checksum %llu  (tokenizers %s)\n",
                hf_mbs, res["tokens_per_s"].get<double>(), res["first_mb_per_s"].get<double>(),
                res["tokens"].get<unsigned long long>(), res["checksum"].get<unsigned long long>(),
                res["version"].get<std::string>().c_str());
    const bool same = res["checksum"].get<uint64_t>() == sum && res["tokens"].get<size_t>() == tokens;
    std::printf("ratio qad/HF: %.2fx   ids identical on the whole corpus: %s\n", mbs / hf_mbs, same ? "yes" : "NO");
    if (!same) return 1;
  }
  return 0;
}
