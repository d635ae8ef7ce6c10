// Components the shared goldens do not exercise, on tiny hand-made tokenizer.json files, with the ids HF's
// semantics give (worked out in the comments): Metaspace, Digits, added-token lstrip/rstrip/single_word,
// normalized added tokens, unk/fuse_unk and Strip/Metaspace decoders.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "util/remove_tree.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace qad::tokenizer {
namespace {

using nlohmann::json;

// vocab: ▁ a b c ▁a 1 2 3 <m> [x] ' ' ab [ x ] 12 qq
json base_tokenizer() {
  json vocab = {{"\u2581", 0}, {"a", 1}, {"b", 2}, {"c", 3}, {"\u2581a", 4}, {"1", 5}, {"2", 6}, {"3", 7},
                {" ", 10},     {"ab", 11}, {"[", 12}, {"x", 13}, {"]", 14}, {"12", 15}, {"<unk>", 17}};
  return {{"version", "1.0"},
          {"added_tokens",
           json::array({{{"id", 8}, {"content", "<m>"}, {"lstrip", true}, {"rstrip", true}, {"single_word", false},
                         {"normalized", false}, {"special", true}},
                        {{"id", 9}, {"content", "[x]"}, {"lstrip", false}, {"rstrip", false}, {"single_word", true},
                         {"normalized", false}, {"special", false}},
                        {{"id", 16}, {"content", "qq"}, {"lstrip", false}, {"rstrip", false}, {"single_word", false},
                         {"normalized", true}, {"special", false}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer", nullptr},
          {"post_processor", nullptr},
          {"decoder", nullptr},
          {"model",
           {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({json::array({"\u2581", "a"}), "a b", "1 2"})},
            {"unk_token", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}}}};
}

Tokenizer load_json(const json& j) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(QAD_BINARY_DIR) / "test_data" / ("components-" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << j.dump();
  Tokenizer t = Tokenizer::load(dir / "tokenizer.json");
  ::qad::remove_tree(dir);
  return t;
}

TEST(Components, MetaspacePreTokenizerAndDecoder) {
  json j = base_tokenizer();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", true}};
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", true}};
  const Tokenizer tok = load_json(j);
  // "a b" -> "▁a▁b" -> split before each ▁: "▁a" (merges to 4), "▁b" (0, 2).
  EXPECT_EQ(tok.encode("a b"), (std::vector<int32_t>{4, 0, 2}));
  EXPECT_EQ(tok.decode({4, 0, 2}), "a b");  // the first token's leading space is dropped
  // prepend_scheme "first": only the piece at the start of the text gets the ▁.
  j["pre_tokenizer"]["prepend_scheme"] = "first";
  const Tokenizer first = load_json(j);
  EXPECT_EQ(first.encode("a<m>a"), (std::vector<int32_t>{4, 8, 1}));
  EXPECT_EQ(tok.encode("a<m>a"), (std::vector<int32_t>{4, 8, 4}));
}

TEST(Components, DigitsIndividualOrContiguous) {
  json j = base_tokenizer();
  j["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_EQ(load_json(j).encode("123"), (std::vector<int32_t>{5, 6, 7}));
  j["pre_tokenizer"]["individual_digits"] = false;
  EXPECT_EQ(load_json(j).encode("123"), (std::vector<int32_t>{15, 7}));  // one piece: 1+2 merge
}

TEST(Components, AddedTokenStripSingleWordNormalized) {
  json j = base_tokenizer();
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", "q"}}}, {"content", "a"}};
  const Tokenizer tok = load_json(j);
  // lstrip/rstrip swallow the spaces around <m>.
  EXPECT_EQ(tok.encode("a  <m>  b"), (std::vector<int32_t>{1, 8, 2}));
  // single_word: "[x]" glued to "a" is plain text (each char a token); the free-standing one is the token.
  EXPECT_EQ(tok.encode("a[x] [x]"), (std::vector<int32_t>{1, 12, 13, 14, 10, 9}));
  // A normalized added token is matched after normalization: "qq" and "aa" both normalize to "aa".
  EXPECT_EQ(tok.encode("qq"), (std::vector<int32_t>{16}));
  EXPECT_EQ(tok.encode("aa"), (std::vector<int32_t>{16}));
  EXPECT_EQ(tok.encode("ab"), (std::vector<int32_t>{11}));
  // No unk and no byte fallback: unknown characters are dropped, as HF's BPE does, and the symbols left
  // either side become neighbours that merge.
  EXPECT_EQ(tok.encode("a\xE2\x82\xAC" "b"), (std::vector<int32_t>{11}));
}

TEST(Components, UnknownCharactersFuseIntoOneUnk) {
  json j = base_tokenizer();
  j["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(load_json(j).encode("a\xE2\x82\xAC\xE2\x82\xAC" "b"), (std::vector<int32_t>{1, 17, 17, 2}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(load_json(j).encode("a\xE2\x82\xAC\xE2\x82\xAC" "b"), (std::vector<int32_t>{1, 17, 2}));
}

TEST(Components, TemplateWithSuffixAndStripDecoder) {
  json j = base_tokenizer();
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", json::array({{{"SpecialToken", {{"id", "<m>"}, {"type_id", 0}}}},
                                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                                 {{"SpecialToken", {{"id", "<m>"}, {"type_id", 0}}}}})},
                         {"special_tokens", {{"<m>", {{"id", "<m>"}, {"ids", {8}}, {"tokens", {"<m>"}}}}}}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Fuse"}}, {{"type", "Strip"}, {"content", "a"}, {"start", 2}, {"stop", 1}}})}};
  const Tokenizer tok = load_json(j);
  EXPECT_EQ(tok.encode("c"), (std::vector<int32_t>{8, 3, 8}));
  EXPECT_EQ(tok.encode("c", false), (std::vector<int32_t>{3}));
  // Fuse gives "aaacaa"; Strip removes at most 2 leading and 1 trailing "a".
  EXPECT_EQ(tok.decode({1, 1, 1, 3, 1, 1}, false), "aca");
  EXPECT_EQ(tok.decode({8, 3, 8}, true), "c");
}

}  // namespace
}  // namespace qad::tokenizer
