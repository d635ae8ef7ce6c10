// Normalizers of tokenizer.json ("normalizer"): NFC, NFD, Prepend, Replace, Strip, Sequence.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace qad::tokenizer {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Writes the normalized text to `out` and returns true, or returns false when `in` is unchanged.
  virtual bool normalize(std::string_view in, std::string& out) const = 0;
};

std::unique_ptr<Normalizer> make_nfc();
std::unique_ptr<Normalizer> make_nfd();
std::unique_ptr<Normalizer> make_prepend(std::string prefix);
// Replaces every match of a literal string (or of `regex` when given) with `content`.
std::unique_ptr<Normalizer> make_replace(std::string literal, std::unique_ptr<Regex> regex, std::string content);
std::unique_ptr<Normalizer> make_strip(bool left, bool right);
std::unique_ptr<Normalizer> make_sequence(std::vector<std::unique_ptr<Normalizer>> parts);

// Rust's char::is_whitespace (the White_Space property).
bool is_white_space(uint32_t cp);

}  // namespace qad::tokenizer
