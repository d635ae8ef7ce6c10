// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): Split (string or regex, all five delimiter behaviours,
// invert), ByteLevel, Metaspace, Digits, WhitespaceSplit and Sequence. Each one maps pieces to sub-pieces.
#pragma once
#include <array>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace qad::tokenizer {

// A piece of normalized text. `at_origin`: the piece starts at offset 0 of the original text (Metaspace's
// prepend_scheme "first" needs it).
struct Piece {
  std::string_view text;
  bool at_origin = false;
};

// Strings created by pre-tokenizers (prefixes, byte-level mapping); pieces point into them.
using PieceStore = std::deque<std::string>;

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void split(const Piece& in, std::vector<Piece>& out, PieceStore& store) const = 0;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// HF's GPT-2 pattern, used by ByteLevel(use_regex=true).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::unique_ptr<PreTokenizer> make_split_regex(std::unique_ptr<Regex> re, SplitBehavior b, bool invert);
std::unique_ptr<PreTokenizer> make_split_literal(std::string literal, SplitBehavior b, bool invert);
// map_bytes=false leaves bytes as they are: the BPE model then works on raw bytes (byte-level fast path).
std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex, bool map_bytes);
std::unique_ptr<PreTokenizer> make_metaspace(std::string replacement, std::string prepend_scheme, bool split);
std::unique_ptr<PreTokenizer> make_digits(bool individual);
std::unique_ptr<PreTokenizer> make_whitespace_split();
std::unique_ptr<PreTokenizer> make_pre_sequence(std::vector<std::unique_ptr<PreTokenizer>> parts);

// GPT-2's bytes_to_unicode alphabet: byte -> code point, and the inverse (-1 for other code points).
const std::array<uint32_t, 256>& byte_to_char();
int char_to_byte(uint32_t cp);
// Maps raw bytes to their byte-level string ("Ġ" for a space).
std::string to_byte_level(std::string_view bytes);

}  // namespace qad::tokenizer
