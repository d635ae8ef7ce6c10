// Added tokens (tokenizer.json "added_tokens"): found in the text before the model sees it, leftmost
// longest match first (HF's aho-corasick LeftmostLongest), with lstrip/rstrip/single_word handling.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qad::tokenizer {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// A run of the input: either an added token (id >= 0) or plain text (id == -1), as byte offsets.
struct Segment {
  size_t start, end;
  int32_t id;
};

class AddedTokenMatcher {
 public:
  // `patterns[i]` is what to look for (the content, or its normalized form) for tokens[i].
  AddedTokenMatcher() = default;
  AddedTokenMatcher(const std::vector<AddedToken>& tokens, const std::vector<std::string>& patterns);
  bool empty() const { return tokens_.empty(); }

  // Splits `text` (valid UTF-8) into segments covering it; text segments may be empty-free.
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  struct TrieNode {
    std::vector<std::pair<unsigned char, int32_t>> kids;  // sorted by byte
    int32_t token = -1;                                   // index into tokens_ when a pattern ends here
  };
  int32_t child(int32_t node, unsigned char b) const;
  std::vector<TrieNode> trie_;
  std::vector<AddedToken> tokens_;
  bool first_byte_[256] = {};
};

}  // namespace qad::tokenizer
