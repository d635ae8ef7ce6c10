// HF tokenizers goldens: every text of shared/tokenizers/*/golden.jsonl and of stories260K's
// golden_tokenizer.json must encode to exactly its ids (with and without special tokens) and decode back.
#include <gtest/gtest.h>

#include <fstream>

#include "util/remove_tree.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

using qad::testing::read_jsonl;
using qad::testing::slurp;
using qad::testing::tok_shared_dir;
using qad::testing::tokenizer_dir;

std::string show(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, EveryTextEncodesAndDecodesExactly) {
  QAD_REQUIRE_SHARED();
  const std::string name = GetParam();
  const Tokenizer tok = Tokenizer::load(tokenizer_dir(name));
  const auto rows = read_jsonl(slurp(tok_shared_dir() / "tokenizers" / name / "golden.jsonl"));
  ASSERT_EQ(rows.size(), 366u);
  int bad_plain = 0, bad_special = 0, bad_decode = 0;
  int64_t tokens = 0;
  std::vector<std::string> texts;
  for (const auto& row : rows) {
    const std::string text = row["text"];
    texts.push_back(text);
    const auto want = row["ids"].get<std::vector<int32_t>>();
    const auto want_special = row["ids_with_special"].get<std::vector<int32_t>>();
    const std::string want_decoded = row["decoded"];
    tokens += static_cast<int64_t>(want.size());
    const auto got = tok.encode(text, false);
    if (got != want && ++bad_plain <= 5)
      ADD_FAILURE() << name << " " << row["id"] << " (" << row["category"] << "): encode(add_special_tokens=false)\n got  "
                    << show(got) << "\n want " << show(want);
    const auto got_special = tok.encode(text, true);
    if (got_special != want_special && ++bad_special <= 5)
      ADD_FAILURE() << name << " " << row["id"] << ": encode(add_special_tokens=true)\n got  " << show(got_special)
                    << "\n want " << show(want_special);
    const std::string decoded = tok.decode(want_special, false);
    if (decoded != want_decoded && ++bad_decode <= 5)
      ADD_FAILURE() << name << " " << row["id"] << ": decode\n got  " << decoded << "\n want " << want_decoded;
  }
  EXPECT_EQ(bad_plain, 0) << "texts with wrong ids (add_special_tokens=false), of " << rows.size();
  EXPECT_EQ(bad_special, 0) << "texts with wrong ids (add_special_tokens=true)";
  EXPECT_EQ(bad_decode, 0) << "texts whose decode differs";
  std::cout << name << ": " << rows.size() << " texts, " << tokens << " tokens, mismatches " << bad_plain << "/"
            << bad_special << "/" << bad_decode << "\n";

  // Batched encoding over threads gives the same ids as one at a time.
  const auto batch = tok.encode_batch(texts, true, 3);
  ASSERT_EQ(batch.size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i)
    EXPECT_EQ(batch[i], rows[i]["ids_with_special"].get<std::vector<int32_t>>()) << rows[i]["id"];
}

INSTANTIATE_TEST_SUITE_P(SharedTokenizers, Golden, ::testing::Values("qwen3", "llama3", "llama3_1", "gpt2", "qad8k"));

TEST(Golden, Stories260kSentencePieceByteFallback) {
  QAD_REQUIRE_SHARED();
  const auto dir = tok_shared_dir() / "models" / "stories260K";
  const Tokenizer tok = Tokenizer::load(dir);
  const auto golden = nlohmann::json::parse(slurp(dir / "golden_tokenizer.json"));
  const auto& entries = golden["entries"];
  ASSERT_EQ(entries.size(), 460u);
  int bad = 0, bad_plain = 0, bad_decode = 0;
  for (const auto& e : entries) {
    const std::string text = e["text"];
    const auto want = (e.contains("hf_ids") ? e["hf_ids"] : e["ids"]).get<std::vector<int32_t>>();
    const auto got = tok.encode(text, true);
    if (got != want && ++bad <= 5) ADD_FAILURE() << "text '" << text << "'\n got  " << show(got) << "\n want " << show(want);
    const std::vector<int32_t> want_plain(want.begin() + 1, want.end());  // without the BOS of the template
    if (tok.encode(text, false) != want_plain) ++bad_plain;
    // HF decode(skip_special_tokens=True) round-trips every text (shared/models/stories260K/README.md).
    if (!e.contains("hf_ids") && tok.decode(want, true) != text && ++bad_decode <= 5)
      ADD_FAILURE() << "decode of '" << text << "' gave '" << tok.decode(want, true) << "'";
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(bad_plain, 0);
  EXPECT_EQ(bad_decode, 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), std::nullopt);
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.chat_family(), ChatFamily::kNone);
}

TEST(Golden, GenerationsDecodeLikeTransformers) {
  QAD_REQUIRE_SHARED();
  const auto dir = tok_shared_dir() / "models" / "stories260K";
  const Tokenizer tok = Tokenizer::load(dir);
  const auto gens = nlohmann::json::parse(slurp(dir / "golden_generate.json"))["generations"];
  ASSERT_FALSE(gens.empty());
  for (const auto& g : gens) {
    EXPECT_EQ(tok.encode(g["prompt"].get<std::string>(), true), g["prompt_ids"].get<std::vector<int32_t>>()) << g["name"];
    EXPECT_EQ(tok.decode(g["ids"].get<std::vector<int32_t>>(), true), g["text_hf_decode"].get<std::string>()) << g["name"];
  }
}

// shared/tokenizers/qad8k/README.md: bytes per token on the held-out corpus, made with HF tokenizers:
// prose 3.39, Python 3.67, Go 2.64 for qad8k and 4.23, 4.42, 2.91 for Qwen3 (2.9 MB of real text).
TEST(Golden, HeldOutCorpusCompressionMatchesTheReadme) {
  QAD_REQUIRE_SHARED();
  const struct {
    const char* tokenizer;
    double prose, python, go;
  } cases[] = {{"qad8k", 3.39, 3.67, 2.64}, {"qwen3", 4.23, 4.42, 2.91}};
  std::vector<std::pair<std::string, std::vector<std::string>>> files;
  for (const char* name : {"prose", "python", "go"}) {
    std::vector<std::string> docs;
    for (const auto& row : read_jsonl(qad::testing::read_xz(tok_shared_dir() / "corpus" / (std::string(name) + "_valid.jsonl.xz"))))
      docs.push_back(row["text"]);
    files.emplace_back(name, std::move(docs));
  }
  for (const auto& c : cases) {
    const Tokenizer tok = Tokenizer::load(tokenizer_dir(c.tokenizer));
    const double want[] = {c.prose, c.python, c.go};
    for (size_t f = 0; f < files.size(); ++f) {
      size_t bytes = 0, tokens = 0;
      for (const auto& ids : tok.encode_batch(files[f].second, false, 2)) tokens += ids.size();
      for (const auto& d : files[f].second) bytes += d.size();
      const double ratio = static_cast<double>(bytes) / static_cast<double>(tokens);
      EXPECT_NEAR(ratio, want[f], 0.005) << c.tokenizer << " " << files[f].first << ": " << bytes << " bytes, " << tokens
                                         << " tokens";
    }
  }
}

struct Meta {
  const char* name;
  int64_t vocab;
  std::optional<int32_t> bos, eos, pad;
  ChatFamily chat;
};

TEST(Golden, VocabularySizesAndConfigTokens) {
  QAD_REQUIRE_SHARED();
  const Meta metas[] = {
      {"qwen3", 151669, std::nullopt, 151645, 151643, ChatFamily::kQwen},
      {"llama3", 128256, 128000, 128001, std::nullopt, ChatFamily::kLlama3},
      {"llama3_1", 128256, 128000, 128009, std::nullopt, ChatFamily::kLlama3},
      {"gpt2", 50257, 50256, 50256, std::nullopt, ChatFamily::kNone},
      {"qad8k", 8192, std::nullopt, 8191, 8189, ChatFamily::kQwen},
  };
  for (const Meta& m : metas) {
    const Tokenizer tok = Tokenizer::load(tokenizer_dir(m.name));
    EXPECT_EQ(tok.vocab_size(), m.vocab) << m.name;
    EXPECT_EQ(tok.bos_id(), m.bos) << m.name;
    EXPECT_EQ(tok.eos_id(), m.eos) << m.name;
    EXPECT_EQ(tok.pad_id(), m.pad) << m.name;
    EXPECT_EQ(tok.chat_family(), m.chat) << m.name;
  }
  const Tokenizer qwen = Tokenizer::load(tokenizer_dir("qwen3") / "tokenizer.json");  // a file path works too
  EXPECT_EQ(qwen.token_to_id("Hello"), 9707);
  EXPECT_EQ(qwen.token_to_id("Ġworld"), 1879);
  EXPECT_EQ(qwen.token_to_id("<|im_start|>"), 151644);
  EXPECT_EQ(qwen.token_to_id("no such token"), std::nullopt);
  EXPECT_EQ(qwen.eos_id(), 151645);
}

TEST(Golden, MalformedTokenizerJsonNamesTheFile) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(QAD_BINARY_DIR) / "test_data" / ("malformed-" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto expect_error = [&](const std::string& content, const std::string& needle) {
    { std::ofstream(dir / "tokenizer.json") << content; }
    try {
      Tokenizer::load(dir);
      ADD_FAILURE() << "no error for: " << content;
    } catch (const qad::Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find((dir / "tokenizer.json").string()), std::string::npos) << what;
      EXPECT_NE(what.find(needle), std::string::npos) << what;
    }
  };
  expect_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [", "not valid JSON");
  expect_error("{\"normalizer\": null}", "missing key 'model'");
  expect_error(R"({"model": {"type": "Unigram", "vocab": []}})", "Unigram");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})", "merged token 'ab'");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                  "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(?<=a)b"}, "behavior": "Isolated"}})",
               "look-behind");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "NFKC"}})",
               "NFKC");
  ::qad::remove_tree(dir);
  try {
    Tokenizer::load(dir);
    ADD_FAILURE() << "no error for a missing folder";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
  }
}

}  // namespace
}  // namespace qad::tokenizer
