// Bounded excerpts of user data in messages: a 50 MB line must not flood the terminal or skipped.jsonl.
#pragma once
#include <fmt/format.h>

#include <string>
#include <string_view>

namespace qad {

// `s` itself when it has at most `max_bytes` bytes, else its first max_bytes bytes (not splitting a UTF-8
// character) followed by "... (N bytes)".
inline std::string clip_for_message(std::string_view s, size_t max_bytes = 200) {
  if (s.size() <= max_bytes) return std::string(s);
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // a continuation byte
  return fmt::format("{}... ({} bytes)", s.substr(0, cut), s.size());
}

}  // namespace qad
