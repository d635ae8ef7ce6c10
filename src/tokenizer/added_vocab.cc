// Added-token matching with a byte trie; see added_vocab.h. Mirrors HF AddedVocabulary::find_matches.
#include "tokenizer/added_vocab.h"

#include <algorithm>

#include "tokenizer/normalizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"

namespace qad::tokenizer {

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens, const std::vector<std::string>& patterns)
    : tokens_(tokens) {
  trie_.emplace_back();
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::string& p = patterns[t];
    if (p.empty()) continue;
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    int32_t node = 0;
    for (unsigned char b : p) {
      int32_t next = child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(trie_.size());
        trie_.emplace_back();
        auto& kids = trie_[static_cast<size_t>(node)].kids;
        kids.insert(std::upper_bound(kids.begin(), kids.end(), std::make_pair(b, INT32_MIN)), {b, next});
      }
      node = next;
    }
    trie_[static_cast<size_t>(node)].token = static_cast<int32_t>(t);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char b) const {
  for (const auto& [k, n] : trie_[static_cast<size_t>(node)].kids)
    if (k == b) return n;
  return -1;
}

namespace {
// Rust char::is_alphanumeric approximated by \p{L} or \p{N} (used only for single_word tokens).
bool is_word_char(uint32_t cp) { return unicode::props(cp) & (unicode::kLetter | unicode::kNumber); }
}  // namespace

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  size_t start_offset = 0;
  size_t pos = 0;
  const size_t n = text.size();
  while (pos < n) {
    // Leftmost position where some token starts, then the longest token there.
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t k = pos; k < n; ++k) {
      node = child(node, static_cast<unsigned char>(text[k]));
      if (node < 0) break;
      if (trie_[static_cast<size_t>(node)].token >= 0) {
        best = trie_[static_cast<size_t>(node)].token;
        best_end = k + 1;
      }
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[static_cast<size_t>(best)];
    size_t start = pos, stop = best_end;
    pos = best_end;  // the automaton continues after the raw match
    if (tok.single_word) {
      bool start_space = start == 0;
      if (!start_space) {
        size_t p = utf8::prev(text, start), q = p;
        start_space = !is_word_char(utf8::decode(text, q));
      }
      bool stop_space = stop == n;
      if (!stop_space) {
        size_t q = stop;
        stop_space = !is_word_char(utf8::decode(text, q));
      }
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t p = utf8::prev(text, s), q = p;
        if (!is_white_space(utf8::decode(text, q))) break;
        s = p;
      }
      start = std::max(s, start_offset);
    }
    if (tok.rstrip) {
      while (stop < n) {
        size_t q = stop;
        if (!is_white_space(utf8::decode(text, q))) break;
        stop = q;
      }
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, tok.id});
    start_offset = stop;
  }
  if (start_offset < n) out.push_back({start_offset, n, -1});
}

}  // namespace qad::tokenizer
