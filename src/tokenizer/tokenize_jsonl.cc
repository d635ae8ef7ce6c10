// tokenize_jsonl: batches of lines are parsed, encoded over threads and written in order.
#include "tokenizer/tokenize_jsonl.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/message.h"

namespace qad::tokenizer {
namespace {

namespace fs = std::filesystem;

// The compression a file's first bytes announce, if any (qad tokenize reads plain text only).
const char* compression_of(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  unsigned char b[6] = {0};
  f.read(reinterpret_cast<char*>(b), sizeof(b));
  const auto n = f.gcount();
  if (n >= 6 && b[0] == 0xFD && b[1] == '7' && b[2] == 'z' && b[3] == 'X' && b[4] == 'Z' && b[5] == 0) return "xz";
  if (n >= 4 && b[0] == 0x28 && b[1] == 0xB5 && b[2] == 0x2F && b[3] == 0xFD) return "zstd";
  if (n >= 2 && b[0] == 0x1F && b[1] == 0x8B) return "gzip";
  if (n >= 3 && b[0] == 'B' && b[1] == 'Z' && b[2] == 'h') return "bzip2";
  return nullptr;
}

// What would otherwise fail late or silently: a directory as input (an empty output), the input as output
// (replaced by its own tokenization), compressed input (reported as invalid JSON).
void check_paths(const fs::path& input, const fs::path& output) {
  std::error_code ec;
  QAD_CHECK(fs::exists(input, ec), "--input {}: no such file", input.string());
  QAD_CHECK(!fs::is_directory(input, ec), "--input {}: is a directory; give one .jsonl file", input.string());
  QAD_CHECK(!fs::is_directory(output, ec), "--out {}: is a directory; give a file name", output.string());
  QAD_CHECK(!fs::exists(output, ec) || !fs::equivalent(input, output, ec), "--out {} is the input file; writing "
            "it would replace the input with its tokenization: give another --out", output.string());
  if (const char* c = compression_of(input)) {
    fail("--input {}: the file is {}-compressed; qad tokenize reads plain JSON Lines: decompress it first (e.g. "
         "{} -dk {})", input.string(), c, std::string(c) == "zstd" ? "zstd" : std::string(c) == "gzip" ? "gzip" :
         std::string(c) == "bzip2" ? "bzip2" : "xz", input.string());
  }
}

}  // namespace

TokenizeJsonlStats tokenize_jsonl(const Tokenizer& tok, const std::filesystem::path& input,
                                  const std::filesystem::path& output, bool add_special_tokens, int threads) {
  check_paths(input, output);
  std::ifstream in(input, std::ios::binary);
  QAD_CHECK(in, "--input {}: cannot open it ({})", input.string(), std::strerror(errno));
  TokenizeJsonlStats stats;
  write_file_atomic(output, [&](const std::filesystem::path& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    QAD_CHECK(out, "{}: cannot create the output file", tmp.string());
    constexpr size_t kBatch = 4096;
    std::vector<nlohmann::json> rows;
    std::vector<std::string> texts;
    int64_t line_no = 0;
    auto flush = [&] {
      const auto ids = tok.encode_batch(texts, add_special_tokens, threads);
      for (size_t k = 0; k < rows.size(); ++k) {
        rows[k].erase("text");
        rows[k]["ids"] = ids[k];
        out << rows[k].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
        stats.tokens += static_cast<int64_t>(ids[k].size());
      }
      rows.clear();
      texts.clear();
    };
    std::string line;
    while (std::getline(in, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      nlohmann::json row;
      try {
        row = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        qad::fail("{}:{}: not valid JSON ({})", input.string(), line_no, clip_for_message(e.what()));
      }
      QAD_CHECK(row.is_object() && row.contains("text") && row["text"].is_string(),
                "{}:{}: expected a JSON object with a string field \"text\"", input.string(), line_no);
      texts.push_back(row["text"].get<std::string>());
      stats.bytes += static_cast<int64_t>(texts.back().size());
      rows.push_back(std::move(row));
      ++stats.lines;
      if (rows.size() == kBatch) flush();
    }
    flush();
    out.flush();
    QAD_CHECK(out, "{}: write failed (disk full?)", tmp.string());
  });
  return stats;
}

}  // namespace qad::tokenizer
