// `qad tokenize`'s function: each line's "text" becomes "ids" (the tokenizer's encode), other fields stay,
// and a bad line is an error naming the file and line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "util/remove_tree.h"
#include "tokenizer/tokenize_jsonl.h"
#include "tokenizer_test_util.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

TEST(TokenizeJsonl, ReplacesTextByIdsAndKeepsOtherFields) {
  QAD_REQUIRE_SHARED();
  namespace fs = std::filesystem;
  const Tokenizer tok = Tokenizer::load(qad::testing::tokenizer_dir("llama3_1"));
  const fs::path dir = fs::path(QAD_BINARY_DIR) / "test_data" / ("tokenize-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::vector<std::string> texts = {"Hello, world!", "naïve café — 東京 🙂", "<|eot_id|> x\n\n  y"};
  {
    std::ofstream in(dir / "in.jsonl");
    in << nlohmann::json{{"text", texts[0]}, {"id", 7}}.dump() << "\n\n";
    in << nlohmann::json{{"source", "s"}, {"text", texts[1]}}.dump() << "\n";
    in << nlohmann::json{{"text", texts[2]}}.dump() << "\n";
  }
  for (bool special : {false, true}) {
    const auto stats = tokenize_jsonl(tok, dir / "in.jsonl", dir / "out.jsonl", special, 2);
    EXPECT_EQ(stats.lines, 3);
    const auto rows = qad::testing::read_jsonl(qad::testing::slurp(dir / "out.jsonl"));
    ASSERT_EQ(rows.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_FALSE(rows[i].contains("text"));
      EXPECT_EQ(rows[i]["ids"].get<std::vector<int32_t>>(), tok.encode(texts[i], special));
    }
    EXPECT_EQ(rows[0]["id"], 7);
    EXPECT_EQ(rows[1]["source"], "s");
    EXPECT_EQ(rows[0]["ids"][0] == 128000, special);
  }
  {
    std::ofstream in(dir / "bad.jsonl");
    in << "{\"text\": \"ok\"}\n{\"txt\": 1}\n";
  }
  try {
    tokenize_jsonl(tok, dir / "bad.jsonl", dir / "bad_out.jsonl", false);
    ADD_FAILURE() << "no error for a line without text";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "bad_out.jsonl")) << "a failed run must not leave a partial output";
  ::qad::remove_tree(dir);
}

}  // namespace
}  // namespace qad::tokenizer
