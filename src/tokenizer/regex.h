// A small backtracking regex engine with Oniguruma's (Ruby syntax) semantics for the subset that
// tokenizer.json split patterns use: alternation tried in order, greedy/lazy/possessive quantifiers,
// {m,n}, (?:...), (?i:...), (?=...), (?!...), classes with \p{L} \p{N} \p{M} \s and negation, ^ $ \A \z.
// Unicode classes come from unicode.h (Unicode 16, as HF tokenizers' onig has them). Anything outside the
// subset is rejected at construction with a message naming the construct, never matched approximately.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qad::tokenizer {

class Regex {
 public:
  // Throws qad::Error("regex /pattern/: ...") on syntax outside the supported subset.
  explicit Regex(std::string_view pattern);

  // Leftmost match in valid UTF-8 `text` starting the search at byte `from`. Sets [*start, *end).
  bool find(std::string_view text, size_t from, size_t* start, size_t* end) const;

  const std::string& pattern() const { return pattern_; }

  // Matching is const and reentrant; the compiled program is shared between copies.
  struct CharClass {
    std::array<uint64_t, 4> latin1{};  // membership for cp < 256, negation already applied
    uint8_t props_any = 0;             // matches when props(cp) & props_any
    std::vector<uint8_t> props_none;   // matches when (props(cp) & m) == 0 for one of these (\S, \P{L})
    std::vector<std::pair<uint32_t, uint32_t>> ranges;  // explicit ranges
    bool negated = false;
    bool matches_slow(uint32_t cp) const;
    bool matches(uint32_t cp) const {
      if (cp < 256) return (latin1[cp >> 6] >> (cp & 63)) & 1;
      return matches_slow(cp);
    }
    void finalize();  // fills latin1 from the items
  };
  struct Program;

 private:
  std::string pattern_;
  std::shared_ptr<const Program> prog_;
};

}  // namespace qad::tokenizer
