// `qad data prepare`: input files (.jsonl, .txt, optionally .xz/.zst compressed) → a token dataset
// directory (index.json + shards), encoded on many threads in input order, with every bad line reported.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/document_encoder.h"
#include "data/record.h"

namespace qad::data {

enum class OnBadLine { skip, error };

struct BadLine {
  std::string file;
  int64_t line = 0;
  BadLineReason reason{};
  std::string detail;
  std::string message() const;  // "file:line: reason: detail"
};

struct PrepareOptions {
  std::filesystem::path output;  // the dataset directory; it appears complete or not at all
  RecordFields fields;
  // What ends each text document (tokenizer/doc_end.h resolves --doc-end): unset = the encoder's EOS; nullopt
  // inside = nothing. Chat documents end as their template says.
  std::optional<std::optional<int32_t>> doc_end;
  OnBadLine on_bad_line = OnBadLine::skip;
  int threads = 0;                       // encoding threads; 0 = all hardware threads
  int64_t shard_tokens = int64_t{1} << 24;  // start a new shard past this many tokens
  double valid_fraction = 0.0;           // recorded as the dataset's default split (applied by the loader)
  uint64_t split_seed = 0;               // recorded with it
  bool progress = true;                  // a progress line on stderr
  int64_t lines_per_chunk = 256;         // unit of work for one thread
  // Called for every bad line, in input order. Unset: the first `log_bad_lines` go to stderr.
  std::function<void(const BadLine&)> on_bad_line_report;
  int64_t log_bad_lines = 20;
};

struct InputStats {
  std::string path;
  int64_t lines = 0, blank_lines = 0, documents = 0, tokens = 0, supervised_tokens = 0;
  std::map<std::string, int64_t> skipped;  // by reason name
  nlohmann::json to_json() const;
};

struct PrepareSummary {
  int64_t documents = 0, text_documents = 0, chat_documents = 0;
  int64_t tokens = 0, supervised_tokens = 0;
  int64_t lines = 0, blank_lines = 0, skipped_lines = 0;
  std::map<std::string, int64_t> skipped_by_reason;
  std::vector<InputStats> inputs;
  int64_t shards = 0;
  double seconds = 0;
  std::string to_text() const;  // the human-readable summary the CLI prints
};

// Throws qad::Error on unreadable input, on the first bad line with OnBadLine::error (naming file:line;
// empty documents are always skipped and listed, never fatal),
// and when `output` exists but is not a dataset (it is never replaced then).
PrepareSummary prepare_dataset(const std::vector<std::filesystem::path>& inputs, const DocumentEncoder& encoder,
                               const PrepareOptions& options);

}  // namespace qad::data
