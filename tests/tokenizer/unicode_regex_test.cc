// Unicode tables and the regex engine against shared/tokenizers/unicode_reference.json (what HF's
// Oniguruma and NFC actually do), plus regex semantics the split patterns rely on, and UTF-8 repair.
#include <gtest/gtest.h>

#include <set>

#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

using qad::testing::slurp;
using qad::testing::tok_shared_dir;

std::string u8(uint32_t cp) {
  std::string s;
  utf8::append(s, cp);
  return s;
}

bool full_match(const Regex& re, const std::string& s) {
  size_t a, b;
  return re.find(s, 0, &a, &b) && a == 0 && b == s.size();
}

std::vector<std::string> split_all(const Regex& re, const std::string& s) {
  std::vector<std::string> out;
  size_t from = 0, a, b;
  while (from < s.size() && re.find(s, from, &a, &b)) {
    EXPECT_GT(b, a);
    out.push_back(s.substr(a, b - a));
    from = b;
  }
  return out;
}

const nlohmann::json& reference() {
  static const nlohmann::json ref = nlohmann::json::parse(slurp(tok_shared_dir() / "tokenizers" / "unicode_reference.json"));
  return ref;
}

std::vector<bool> membership(const nlohmann::json& ranges) {
  std::vector<bool> in(0x110000, false);
  for (const auto& r : ranges)
    for (uint32_t c = r[0]; c <= r[1].get<uint32_t>(); ++c) in[c] = true;
  return in;
}

TEST(UnicodeRegex, ClassesMatchOnigurumaForEveryCodePoint) {
  QAD_REQUIRE_SHARED();
  const struct {
    const char* key;
    const char* pattern;
  } cases[] = {{"\\p{L}", "\\p{L}"}, {"\\p{N}", "\\p{N}"}, {"\\s", "\\s"}, {"\\p{M}", "\\p{M}"}};
  for (const auto& c : cases) {
    const auto in = membership(reference()["classes"][c.key]);
    const Regex re(c.pattern), neg(std::string("[^") + c.pattern + "]");
    int wrong = 0;
    for (uint32_t cp = 0; cp < 0x110000; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;  // surrogates are not text
      const std::string s = u8(cp);
      if (full_match(re, s) != in[cp] || full_match(neg, s) == in[cp]) {
        if (++wrong <= 3) ADD_FAILURE() << c.key << " wrong at U+" << std::hex << cp;
      }
    }
    EXPECT_EQ(wrong, 0) << c.key;
  }
}

TEST(UnicodeRegex, CaseInsensitiveContractionsFoldLikeOniguruma) {
  QAD_REQUIRE_SHARED();
  for (const auto& [letter, cps] : reference()["case_insensitive_letters"].items()) {
    const Regex re("(?i:" + letter + ")");
    std::set<uint32_t> got;
    for (uint32_t cp = 0; cp < 0x110000; ++cp)
      if ((cp < 0xD800 || cp > 0xDFFF) && full_match(re, u8(cp))) got.insert(cp);
    EXPECT_EQ(got, cps.get<std::set<uint32_t>>()) << letter;
  }
}

TEST(UnicodeRegex, NfcChangesExactlyTheReferenceCodePoints) {
  QAD_REQUIRE_SHARED();
  const auto changes = membership(reference()["nfc_changes_codepoints"]);
  int wrong = 0;
  for (uint32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    const std::string s = u8(cp);
    if ((unicode::nfc(s) != s) != changes[cp] && ++wrong <= 3) ADD_FAILURE() << "NFC of U+" << std::hex << cp;
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(unicode::nfc("e\xCC\x81"), "\xC3\xA9");                          // e + acute -> é
  EXPECT_EQ(unicode::nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // conjoining jamo -> 각
  EXPECT_EQ(unicode::nfc("a\xCC\x95\xCC\x81"), "\xC3\xA1\xCC\x95");        // reordering (ccc 232 after 230), then compose
  // HF does not compose the Dives Akuru pair U+11935 U+11930, although Unicode 13+ does.
  const std::string dives = u8(0x11935) + u8(0x11930);
  EXPECT_EQ(unicode::nfc(dives), dives);
}

TEST(UnicodeRegex, SplitPatternSemantics) {
  const Regex qwen(R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)");
  EXPECT_EQ(split_all(qwen, "a   b"), (std::vector<std::string>{"a", "  ", " b"}));
  EXPECT_EQ(split_all(qwen, "He'S 12"), (std::vector<std::string>{"He", "'S", " ", "1", "2"}));
  EXPECT_EQ(split_all(qwen, "x \n\n  y"), (std::vector<std::string>{"x", " \n\n", " ", " y"}));
  const Regex llama(R"(\p{N}{1,3})");
  EXPECT_EQ(split_all(llama, "1234567"), (std::vector<std::string>{"123", "456", "7"}));
  const Regex gpt2{std::string(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)")};
  EXPECT_EQ(split_all(gpt2, "I'M  ok"), (std::vector<std::string>{"I", "'", "M", " ", " ok"}));
  // Alternation order, lazy and possessive quantifiers, look-ahead, anchors.
  size_t a, b;
  ASSERT_TRUE(Regex("ab|abc").find("abc", 0, &a, &b));
  EXPECT_EQ(b, 2u);
  ASSERT_TRUE(Regex("a+?").find("aaa", 0, &a, &b));
  EXPECT_EQ(b, 1u);
  EXPECT_FALSE(Regex("a++a").find("aaa", 0, &a, &b));
  ASSERT_TRUE(Regex("a(?=b)").find("acab", 0, &a, &b));
  EXPECT_EQ(a, 2u);
  ASSERT_TRUE(Regex("^b").find("a\nb", 0, &a, &b));
  EXPECT_EQ(a, 2u);
  EXPECT_FALSE(Regex("\\Ab").find("a\nb", 0, &a, &b));
  ASSERT_TRUE(Regex("x{2,}").find("xxxx", 0, &a, &b));
  EXPECT_EQ(b, 4u);
  ASSERT_TRUE(Regex("a{,2}b").find("aaab", 0, &a, &b));
  EXPECT_EQ(a, 1u);
  ASSERT_TRUE(Regex("[a-c]+").find("zzbca", 0, &a, &b));
  EXPECT_EQ(b - a, 3u);
  // Outside the subset: rejected, never matched approximately.
  for (const char* bad : {"(?<=a)b", "\\w+", "\\d", "(a)\\1", "[[:alpha:]]", "(?>a)", "\\p{Lu}", "a**"}) {
    EXPECT_THROW(Regex{std::string(bad)}, qad::Error) << bad;
  }
}

TEST(UnicodeRegex, InvalidUtf8IsRepairedLikeRust) {
  QAD_REQUIRE_SHARED();
  EXPECT_EQ(utf8::lossy("a\xF0\x9F\x98" "b"), "a\xEF\xBF\xBD" "b");  // truncated 4-byte: one U+FFFD
  EXPECT_EQ(utf8::lossy("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");     // overlong: one per byte
  EXPECT_EQ(utf8::lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8::lossy("ok \xE2\x82\xAC"), "ok \xE2\x82\xAC");
  const Tokenizer tok = Tokenizer::load(tok_shared_dir() / "tokenizers" / "qad8k");
  const std::string bad = "caf\xC3 \xFF\xFE end\xE2\x82";
  EXPECT_EQ(tok.encode(bad), tok.encode(utf8::lossy(bad)));
  EXPECT_EQ(tok.decode(tok.encode(bad)), utf8::lossy(bad));
  // Ids that end inside a UTF-8 sequence decode to U+FFFD, as HF's from_utf8_lossy does.
  const auto euro = tok.encode("\xE2\x82\xAC", false);
  ASSERT_GE(euro.size(), 1u);
  std::vector<int32_t> ids = tok.encode("\xF0\x9F\x98\x80", false);  // 😀 as byte tokens
  if (ids.size() > 1) {
    ids.pop_back();
    EXPECT_EQ(tok.decode(ids), "\xEF\xBF\xBD");
  }
}

}  // namespace
}  // namespace qad::tokenizer

namespace qad::tokenizer {
namespace {

// Random bytes and random ids never crash or read out of bounds (run under QAD_SANITIZE to check the latter);
// encode of repaired text round-trips through decode for the byte-level tokenizer.
TEST(UnicodeRegex, RandomInputIsSafe) {
  QAD_REQUIRE_SHARED();
  uint64_t seed = 20261123;
  if (const char* s = std::getenv("QAD_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  uint64_t x = seed;
  auto rnd = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  const Tokenizer qad8k = Tokenizer::load(tok_shared_dir() / "tokenizers" / "qad8k");
  const Tokenizer stories = Tokenizer::load(tok_shared_dir() / "models" / "stories260K");
  for (int it = 0; it < 300; ++it) {
    std::string s(rnd() % 200, '\0');
    for (char& c : s) {
      const uint64_t r = rnd();
      c = static_cast<char>(r % 4 == 0 ? (r >> 8) % 128 : r >> 8);  // mostly high bytes, some ASCII
    }
    const std::string fixed = utf8::lossy(s);
    EXPECT_EQ(qad8k.decode(qad8k.encode(s, false)), unicode::nfc(fixed)) << "seed " << seed << " iteration " << it;
    const auto ids = stories.encode(s, true);
    EXPECT_EQ(stories.decode(ids, true), fixed) << "seed " << seed << " iteration " << it;
    std::vector<int32_t> junk(rnd() % 50);
    for (int32_t& id : junk) id = static_cast<int32_t>(rnd() % 20000) - 100;
    const std::string d = qad8k.decode(junk) + stories.decode(junk);
    EXPECT_EQ(utf8::valid_prefix(d), d.size());
  }
}

}  // namespace
}  // namespace qad::tokenizer
