// The work behind `qad tokenize`: each input line {"text": ...} becomes {"ids": [...]} with its other fields
// kept, for checking and debugging tokenization.
#pragma once
#include <cstdint>
#include <filesystem>

#include "tokenizer/tokenizer.h"

namespace qad::tokenizer {

struct TokenizeJsonlStats {
  int64_t lines = 0, tokens = 0, bytes = 0;
};

// Reads `input` (JSON Lines; blank lines are skipped), writes `output` atomically. Throws qad::Error naming
// the file and line for a line that is not a JSON object with a string "text".
TokenizeJsonlStats tokenize_jsonl(const Tokenizer& tok, const std::filesystem::path& input,
                                  const std::filesystem::path& output, bool add_special_tokens, int threads = 0);

}  // namespace qad::tokenizer
