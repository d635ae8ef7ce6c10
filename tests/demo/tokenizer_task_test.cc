// The demo's word-piece tokenizer (loaded back with qad's HF tokenizer) and its arithmetic task, checked against
// independent computations: every listed word is one token, chats round-trip and are several times shorter than
// their bytes, digits stay one token each, and every worked example's steps and answer are right.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <regex>
#include <string>

#include "demo/arith_task.h"
#include "eval/answer_extraction.h"
#include "demo/demo_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "util/remove_tree.h"

namespace fs = std::filesystem;
using qad::demo::make_example;

namespace {

class DemoTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("qad_demo_tok_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    qad::demo::write_demo_tokenizer(dir_);
  }
  static void TearDownTestSuite() { qad::remove_tree(dir_); }
  static fs::path dir_;
};
fs::path DemoTokenizer::dir_;

std::string chat_text(const qad::demo::ArithExample& e) {
  return qad::demo::chat_prompt(e.question) + e.reasoning + "<|im_end|>\n";
}

TEST_F(DemoTokenizer, EveryWordIsOneTokenAndTheIdsAreFixed) {
  const auto tok = qad::tokenizer::Tokenizer::load(dir_);
  EXPECT_EQ(tok.vocab_size(), qad::demo::demo_vocab_size());
  for (const auto& w : qad::demo::demo_words()) {
    const auto ids = tok.encode(w, false);
    ASSERT_EQ(ids.size(), 1u) << "'" << w << "' is " << ids.size() << " tokens: a merge of another word splits it";
    EXPECT_EQ(tok.decode(ids), w);
  }
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), qad::demo::kEndOfText);
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), qad::demo::kImStart);
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), qad::demo::kImEnd);
  EXPECT_EQ(tok.token_to_id("<think>"), qad::demo::kThinkOpen);
  EXPECT_EQ(tok.token_to_id("</think>"), qad::demo::kThinkClose);
  EXPECT_EQ(tok.eos_id(), qad::demo::kImEnd);
  EXPECT_EQ(tok.pad_id(), qad::demo::kEndOfText);
  EXPECT_EQ(tok.chat_family(), qad::tokenizer::ChatFamily::kQwen);
}

TEST_F(DemoTokenizer, ChatsRoundTripShortWithOneDigitPerToken) {
  const auto tok = qad::tokenizer::Tokenizer::load(dir_);
  size_t bytes = 0, tokens = 0;
  for (int64_t i = 0; i < 300; ++i) {
    const std::string text = chat_text(make_example(7, i));
    const auto ids = tok.encode(text, false);
    ASSERT_EQ(tok.decode(ids), text);
    for (int32_t id : ids) {
      const std::string piece = tok.decode({id});
      EXPECT_LE(std::count_if(piece.begin(), piece.end(), ::isdigit), 1) << "token '" << piece << "' in " << text;
    }
    // Any other text still encodes (byte fallback of the byte-level alphabet).
    bytes += text.size();
    tokens += ids.size();
  }
  EXPECT_LT(tokens * 2, bytes) << tokens << " tokens for " << bytes << " bytes";
  const std::string other = "Ünïcode and words the merges do not know: résumé 12345";
  EXPECT_EQ(tok.decode(tok.encode(other, false)), other);
}

TEST(DemoArith, WorkedStepsAndAnswersAreRight) {
  const std::regex q(R"((?:What is|Compute) (\d+) (\+|-|plus|minus) (\d+)[?.])");
  const std::regex step(R"((\d)([+-])(\d)[+-](\d)=(-?\d+) write (\d) (carry|borrow) (\d) result (\d+))");
  for (int64_t i = 0; i < 500; ++i) {
    const auto e = make_example(3, i);
    std::smatch m;
    ASSERT_TRUE(std::regex_match(e.question, m, q)) << e.question;
    const long a = std::stol(m[1]), b = std::stol(m[3]);
    const bool sub = m[2] == "-" || m[2] == "minus";
    ASSERT_LE(a, 99);
    ASSERT_LE(b, 99);
    EXPECT_EQ(e.answer, std::to_string(sub ? a - b : a + b)) << e.question;
    // The generation up to the stop token, read by the answer rule `qad eval` and the demo use.
    EXPECT_EQ(qad::eval::extract_answer(e.reasoning, qad::eval::AnswerRule::kAfterThink), e.answer);
    // Each digit line: d1 op d2 op carry = value, write value mod 10, carry / borrow out.
    std::string last_result;  // of the digit lines
    for (auto it = std::sregex_iterator(e.reasoning.begin(), e.reasoning.end(), step); it != std::sregex_iterator();
         ++it) {
      const auto& s = *it;
      const int x = std::stoi(s[1]), y = std::stoi(s[3]), c = std::stoi(s[4]), v = std::stoi(s[5]);
      EXPECT_EQ(v, sub ? x - y - c : x + y + c) << s.str();
      EXPECT_EQ(std::stoi(s[6]), ((v % 10) + 10) % 10) << s.str();
      EXPECT_EQ(std::stoi(s[8]), sub ? (v < 0 ? 1 : 0) : v / 10) << s.str();
      last_result = s[9];
    }
    ASSERT_FALSE(last_result.empty()) << e.reasoning;
    // The last "result" line (after a final carry or dropped leading zeros, if any) holds the answer.
    const auto at = e.reasoning.rfind("result ");
    const auto end = e.reasoning.find('\n', at);
    EXPECT_EQ(e.reasoning.substr(at + 7, end - at - 7), e.answer) << e.reasoning;
  }
}

}  // namespace
