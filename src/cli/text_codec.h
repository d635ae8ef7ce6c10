// The hook through which CLI commands turn text into token ids and back. Empty until a tokenizer is linked
// in (the tokenizer library sets it); commands that need text say so with a clear error.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace qad::cli {

struct TextCodec {
  // Encodes `text` with the tokenizer in `model_dir` (BOS included as the tokenizer's template says).
  std::function<std::vector<int64_t>(const std::filesystem::path& model_dir, const std::string& text)> encode;
  std::function<std::string(const std::filesystem::path& model_dir, const std::vector<int64_t>& ids)> decode;
  // `text` as one user message rendered with the model's chat template and its generation prompt (the
  // assistant's turn opened), encoded without further special tokens.
  std::function<std::vector<int64_t>(const std::filesystem::path& model_dir, const std::string& text)> encode_chat;
};

inline TextCodec& text_codec() {
  static TextCodec codec;
  return codec;
}

}  // namespace qad::cli
