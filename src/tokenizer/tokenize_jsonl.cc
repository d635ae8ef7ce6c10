// tokenize_jsonl: batches of lines are parsed, encoded over threads and written in order.
#include "tokenizer/tokenize_jsonl.h"

#include <nlohmann/json.hpp>

#include <fstream>

#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::tokenizer {

TokenizeJsonlStats tokenize_jsonl(const Tokenizer& tok, const std::filesystem::path& input,
                                  const std::filesystem::path& output, bool add_special_tokens, int threads) {
  std::ifstream in(input, std::ios::binary);
  QAD_CHECK(in, "{}: cannot open the input file", input.string());
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
        qad::fail("{}:{}: not valid JSON ({})", input.string(), line_no, e.what());
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
