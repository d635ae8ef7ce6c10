// Unicode properties the tokenizer needs (the regex classes \p{L} \p{N} \p{M} \s as HF's Oniguruma has them,
// Unicode 16.0) and NFC as HF tokenizers does it. Tables: unicode_data.inc (tools/gen_unicode_tables.py).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace qad::tokenizer::unicode {

enum Prop : uint8_t {
  kLetter = 1,       // \p{L}
  kNumber = 2,       // \p{N}
  kMark = 4,         // \p{M}
  kWhiteSpace = 8,   // \s (the 25 White_Space code points)
  kNfcMaybe = 16,    // NFC may change a text that holds this code point
};

// Bit set of Prop for one code point (two-stage table, O(1)).
uint8_t props(uint32_t cp);

// True when NFC leaves `s` (valid UTF-8) unchanged for sure (no kNfcMaybe code point).
bool is_nfc_quick(std::string_view s);

// NFC of valid UTF-8, as HF tokenizers' normalizers.NFC does it.
std::string nfc(std::string_view s);
// NFD of valid UTF-8 (canonical decomposition and ordering).
std::string nfd(std::string_view s);

// Canonical combining class.
uint8_t combining_class(uint32_t cp);

}  // namespace qad::tokenizer::unicode
