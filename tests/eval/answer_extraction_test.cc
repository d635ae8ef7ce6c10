// Answer extraction rules (docs/eval.md): each rule on the cases it exists for and on its edge cases.
#include <gtest/gtest.h>

#include "eval/answer_extraction.h"
#include "util/error.h"

using qad::eval::AnswerRule;
using qad::eval::extract_answer;

TEST(AnswerRule, AfterThinkIsTheArithRule) {
  // tasks/arith/README.md: the text after the last </think>, or the whole text, whitespace-stripped.
  EXPECT_EQ(extract_answer("<think>\n42 * 9\n...result 378\n</think>\n378", AnswerRule::kAfterThink), "378");
  EXPECT_EQ(extract_answer("<think>a</think> 1 <think>b</think>\n 22 \n", AnswerRule::kAfterThink), "22");
  EXPECT_EQ(extract_answer("  no think block 7 \n", AnswerRule::kAfterThink), "no think block 7");
  EXPECT_EQ(extract_answer("<think>unfinished 5", AnswerRule::kAfterThink), "<think>unfinished 5");
  EXPECT_EQ(extract_answer("<think>x</think>", AnswerRule::kAfterThink), "");
  EXPECT_EQ(extract_answer("", AnswerRule::kAfterThink), "");
}

TEST(AnswerRule, LastNumber) {
  EXPECT_EQ(extract_answer("3 apples and 12 pears: 15.", AnswerRule::kLastNumber), "15");
  EXPECT_EQ(extract_answer("it is -4", AnswerRule::kLastNumber), "-4");
  EXPECT_EQ(extract_answer("total 1,234,567 units", AnswerRule::kLastNumber), "1234567");
  EXPECT_EQ(extract_answer("pi is 3.14, e is 2.71.", AnswerRule::kLastNumber), "2.71");
  EXPECT_EQ(extract_answer("a list: 1, 2, 3", AnswerRule::kLastNumber), "3");
  EXPECT_EQ(extract_answer("no digits", AnswerRule::kLastNumber), "");
  EXPECT_EQ(extract_answer("x-7y", AnswerRule::kLastNumber), "-7");
}

TEST(AnswerRule, HashesBoxedFull) {
  EXPECT_EQ(extract_answer("work...\n#### 1,200\n", AnswerRule::kHashes), "1200");
  EXPECT_EQ(extract_answer("#### 1\n#### 2", AnswerRule::kHashes), "2");
  EXPECT_EQ(extract_answer("no marker 5", AnswerRule::kHashes), "");
  EXPECT_EQ(extract_answer("so \\boxed{\\frac{1}{2}} and \\boxed{ 42 }", AnswerRule::kBoxed), "42");
  EXPECT_EQ(extract_answer("\\boxed{\\frac{1}{2}}", AnswerRule::kBoxed), "\\frac{1}{2}");
  EXPECT_EQ(extract_answer("\\boxed{unclosed", AnswerRule::kBoxed), "");
  EXPECT_EQ(extract_answer("\n\t answer \r\n", AnswerRule::kFull), "answer");
}

TEST(AnswerRule, NamesRoundTripAndUnknownNamesAreRefused) {
  for (auto name : qad::eval::answer_rule_names()) {
    EXPECT_EQ(qad::eval::answer_rule_name(qad::eval::parse_answer_rule(name)), name);
  }
  try {
    qad::eval::parse_answer_rule("regex");
    FAIL() << "no error";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("after-think"), std::string::npos) << e.what();
  }
}
