// Chat rendering and the assistant-only loss mask: the arith task's documented rendering and counts (qad8k),
// Qwen3 multi-turn, Llama 3 headers, and a token that straddles the prompt/assistant boundary.
#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

using qad::testing::read_jsonl;
using qad::testing::slurp;
using qad::testing::tok_shared_dir;
using qad::testing::tokenizer_dir;

std::vector<int32_t> masked(const ChatTokens& c) {
  std::vector<int32_t> out;
  for (size_t i = 0; i < c.ids.size(); ++i)
    if (c.loss_mask[i]) out.push_back(c.ids[i]);
  return out;
}

TEST(Chat, ArithTestSetRendersAsDocumented) {
  QAD_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("qad8k"));
  ASSERT_EQ(tok.chat_family(), ChatFamily::kQwen);
  const auto rows = read_jsonl(slurp(tok_shared_dir() / "tasks" / "arith" / "test.jsonl"));
  ASSERT_EQ(rows.size(), 1000u);
  for (const auto& r : rows) {
    const std::string q = r["question"], ref = r["reference"], prompt = r["prompt"];
    const std::vector<ChatMessage> conv = {{"user", q}, {"assistant", ref}};
    ASSERT_EQ(render_chat(tok, {{"user", q}}, true), prompt) << r["id"];
    ASSERT_EQ(render_chat(tok, conv), prompt + ref + "<|im_end|>\n") << r["id"];
    const ChatTokens c = encode_chat(tok, conv);
    ASSERT_EQ(c.ids, tok.encode(render_chat(tok, conv), false)) << r["id"];
    ASSERT_EQ(c.loss_mask.size(), c.ids.size());
    // The prompt is an exact token prefix; the loss covers the reference and <|im_end|>, not the last "\n".
    const auto p = tok.encode(prompt, false);
    ASSERT_TRUE(std::equal(p.begin(), p.end(), c.ids.begin())) << r["id"];
    std::vector<uint8_t> want(c.ids.size(), 1);
    std::fill(want.begin(), want.begin() + static_cast<ptrdiff_t>(p.size()), 0);
    want.back() = 0;
    ASSERT_EQ(c.loss_mask, want) << r["id"];
    ASSERT_EQ(c.ids[c.ids.size() - 2], 8191);
    ASSERT_EQ(tok.decode(masked(c)), ref + "<|im_end|>");
    // The generation prompt ends exactly where the assistant tokens start.
    const ChatTokens g = encode_chat(tok, {{"user", q}}, true);
    ASSERT_EQ(g.ids, p);
    ASSERT_EQ(std::count(g.loss_mask.begin(), g.loss_mask.end(), 1), 0);
  }
}

// shared/tasks/arith/README.md: "the rendered train set is 21.67 M tokens, of which 17.09 M are supervised".
TEST(Chat, ArithTrainSetTokenCountsMatchTheReadme) {
  QAD_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("qad8k"));
  const std::string jsonl = qad::testing::read_xz(tok_shared_dir() / "tasks" / "arith" / "train.jsonl.xz");
  int64_t total = 0, supervised = 0, examples = 0, longest = 0;
  size_t pos = 0;
  while (pos < jsonl.size()) {
    size_t end = jsonl.find('\n', pos);
    if (end == std::string::npos) end = jsonl.size();
    if (end > pos) {
      const auto row = nlohmann::json::parse(std::string_view(jsonl).substr(pos, end - pos));
      std::vector<ChatMessage> conv;
      for (const auto& m : row["messages"]) conv.push_back({m["role"], m["content"]});
      const ChatTokens c = encode_chat(tok, conv);
      total += static_cast<int64_t>(c.ids.size());
      supervised += std::count(c.loss_mask.begin(), c.loss_mask.end(), 1);
      longest = std::max<int64_t>(longest, static_cast<int64_t>(c.ids.size()));
      ++examples;
    }
    pos = end + 1;
  }
  EXPECT_EQ(examples, 200000);
  EXPECT_EQ((total + 5000) / 10000, 2167) << total;
  EXPECT_EQ((supervised + 5000) / 10000, 1709) << supervised;
  EXPECT_EQ(longest, 162);
}

TEST(Chat, Qwen3MultiTurnMasksExactlyTheAssistantTurns) {
  QAD_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("qwen3"));
  const std::vector<ChatMessage> conv = {{"system", "You are terse."},
                                         {"user", "Hi there"},
                                         {"assistant", "Hello! How can I help?"},
                                         {"user", "2+2?"},
                                         {"assistant", "<think>\nadd\n</think>\n4"}};
  const std::string text = render_chat(tok, conv);
  EXPECT_EQ(text,
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nadd\n</think>\n4<|im_end|>\n");
  const ChatTokens c = encode_chat(tok, conv);
  EXPECT_EQ(c.ids, tok.encode(text, false));
  EXPECT_EQ(tok.decode(masked(c)), "Hello! How can I help?<|im_end|><think>\nadd\n</think>\n4<|im_end|>");
  // <think> is an added (non-special) token of Qwen3: one id, and it is learned.
  const int32_t think = *tok.token_to_id("<think>");
  EXPECT_EQ(std::count(c.ids.begin(), c.ids.end(), think), 1);
  EXPECT_EQ(c.loss_mask[static_cast<size_t>(std::find(c.ids.begin(), c.ids.end(), think) - c.ids.begin())], 1);
}

TEST(Chat, Llama3HeadersBosAndTrim) {
  QAD_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("llama3_1"));
  ASSERT_EQ(tok.chat_family(), ChatFamily::kLlama3);
  const std::vector<ChatMessage> conv = {{"user", "  Hi \n"}, {"assistant", "Hello!\n"}};
  const std::string text = render_chat(tok, conv, false);
  EXPECT_EQ(text,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>");
  EXPECT_EQ(render_chat(tok, {{"user", "Hi"}}, true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const ChatTokens c = encode_chat(tok, conv);
  EXPECT_EQ(c.ids, tok.encode(text, false));
  EXPECT_EQ(c.ids.front(), 128000);
  EXPECT_EQ(tok.decode(masked(c)), "Hello!<|eot_id|>");
  EXPECT_EQ(c.ids.back(), 128009);
  EXPECT_EQ(c.loss_mask.back(), 1);
}

TEST(Chat, TokenStraddlingThePromptBoundaryIsLearned) {
  QAD_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("qad8k"));
  // "assistant\n" + "\n\nx": the newlines merge into one pre-token across the boundary.
  const std::vector<ChatMessage> conv = {{"user", "q"}, {"assistant", "\n\nx"}};
  const ChatTokens c = encode_chat(tok, conv);
  EXPECT_EQ(c.ids, tok.encode(render_chat(tok, conv), false));
  const auto prompt = tok.encode(render_chat(tok, {{"user", "q"}}, true), false);
  ASSERT_FALSE(std::equal(prompt.begin(), prompt.end(), c.ids.begin())) << "expected a straddling token here";
  // Every token that holds assistant bytes is learned: the masked tokens decode to a superset of the reply.
  const std::string learned = tok.decode(masked(c));
  EXPECT_NE(learned.find("\n\nx<|im_end|>"), std::string::npos) << learned;
  EXPECT_EQ(learned.find("assistant"), std::string::npos) << learned;
}

TEST(Chat, TokenizerWithoutChatTemplateIsAnError) {
  QAD_REQUIRE_SHARED();
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("gpt2"));
  EXPECT_THROW(encode_chat(tok, {{"user", "hi"}}), qad::Error);
}

}  // namespace
}  // namespace qad::tokenizer
