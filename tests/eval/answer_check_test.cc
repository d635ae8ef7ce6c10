// Answer checkers: the math normalisation table (docs/eval.md "Answer checkers"), numbers, choice letters,
// the answer region of thinking models.
#include <gtest/gtest.h>

#include "eval/answer_check.h"
#include "util/error.h"

namespace qad::eval {
namespace {

TEST(MathNormalisation, Table) {
  struct Case {
    const char* in;
    const char* out;
  };
  const Case cases[] = {
      {"\\boxed{42}", "42"},
      {"$\\frac{1}{2}$", "\\frac{1}{2}"},
      {"\\dfrac{3}{4}", "\\frac{3}{4}"},
      {"\\tfrac12", "\\frac{1}{2}"},
      {"\\frac1{x}", "\\frac{1}{x}"},
      {"\\sqrt2", "\\sqrt{2}"},
      {"\\left( 1, 2 \\right)", "(1,2)"},
      {"x = 5", "5"},
      {"\\text{(B)}", "(B)"},
      {"10\\%", "10"},
      {"90^\\circ", "90"},
      {"90^{\\circ}", "90"},
      {"2.50", "2.5"},
      {"3.0", "3"},
      {".5", "0.5"},
      {"-0.0", "0"},
      {"1,000,000", "1000000"},
      {"1,00", "1,00"},  // not thousands groups: left as is
      {"5.", "5"},
      {"\\(7\\)", "7"},
      {"  \\mathrm{cm}  ", "cm"},
      {"\\!\\,12\\;", "12"},
  };
  for (const auto& c : cases) EXPECT_EQ(normalize_math_answer(c.in), c.out) << c.in;
}

TEST(MathCheck, EqualAfterNormalisationOrAsNumbers) {
  CheckOptions o{.check = AnswerCheck::kMath};
  EXPECT_TRUE(answer_matches("\\boxed{\\dfrac{1}{2}}", "\\frac12", o));
  EXPECT_TRUE(answer_matches("0.5", "\\frac{1}{2}", o));  // as numbers
  EXPECT_TRUE(answer_matches("-\\frac{3}{4}", "-0.75", o));
  EXPECT_TRUE(answer_matches("1,234", "1234", o));
  EXPECT_TRUE(answer_matches("x=3", "3", o));
  EXPECT_FALSE(answer_matches("0.51", "\\frac{1}{2}", o));
  EXPECT_FALSE(answer_matches("", "0", o));
  EXPECT_FALSE(answer_matches("\\sqrt{3}", "\\sqrt{2}", o));
}

TEST(NumericCheck, ToleranceAndForms) {
  EXPECT_EQ(parse_number("1,234.5"), 1234.5);
  EXPECT_EQ(parse_number("-3/4"), -0.75);
  EXPECT_EQ(parse_number("\\frac{1}{8}"), 0.125);
  EXPECT_EQ(parse_number("1e-3"), 0.001);
  EXPECT_EQ(parse_number("50%"), 50.0);
  EXPECT_FALSE(parse_number("12 apples"));
  EXPECT_FALSE(parse_number("1,23"));
  EXPECT_FALSE(parse_number("1/0"));
  EXPECT_FALSE(parse_number(""));
  CheckOptions o{.check = AnswerCheck::kNumeric, .abs_tol = 0.01, .rel_tol = 0};
  EXPECT_TRUE(answer_matches("3.14159", "3.14", o));
  EXPECT_FALSE(answer_matches("3.16", "3.14", o));
  o.abs_tol = 0;
  o.rel_tol = 0.1;
  EXPECT_TRUE(answer_matches("105", "100", o));
  EXPECT_FALSE(answer_matches("111", "100", o));
  EXPECT_FALSE(answer_matches("abc", "100", o));
}

TEST(ExactCheck, StripsWhitespaceOnly) {
  CheckOptions o;
  EXPECT_TRUE(answer_matches(" 378\n", "378", o));
  EXPECT_FALSE(answer_matches("378.0", "378", o));
  EXPECT_FALSE(answer_matches("", "", o));
}

TEST(ChoiceLetters, ExtractionOrder) {
  EXPECT_EQ(extract_choice_letter("so the result is \\boxed{C}"), "C");
  EXPECT_EQ(extract_choice_letter("\\boxed{\\text{(D)}}"), "D");
  EXPECT_EQ(extract_choice_letter("(A) looks wrong. The answer is (B)."), "B");
  EXPECT_EQ(extract_choice_letter("Answer: C"), "C");
  EXPECT_EQ(extract_choice_letter("**Answer:** D"), "D");
  EXPECT_EQ(extract_choice_letter("the answer is A because"), "A");
  EXPECT_EQ(extract_choice_letter("I pick (C) over (A)"), "A");  // the last "(X)"
  EXPECT_EQ(extract_choice_letter(" B. "), "B");
  EXPECT_EQ(extract_choice_letter("E", 4), "");  // only A-D exist
  EXPECT_EQ(extract_choice_letter("Because of Avogadro"), "");
  EXPECT_EQ(extract_choice_letter("the answer is Avogadro's"), "");
  CheckOptions o{.check = AnswerCheck::kChoice};
  EXPECT_TRUE(answer_matches("The answer is (B)", "B", o));
  EXPECT_FALSE(answer_matches("The answer is (B)", "C", o));
}

TEST(ThinkingModels, AnswerRegion) {
  EXPECT_EQ(answer_region("<think>a b</think>\n\\boxed{4}"), "\n\\boxed{4}");
  EXPECT_EQ(answer_region("<think>a</think>x<think>b</think>y"), "y");
  EXPECT_EQ(answer_region("<think>still thinking when cut off 5"), "");
  EXPECT_EQ(answer_region("no thinking 7"), "no thinking 7");
}

TEST(VoteKeys, EquivalentAnswersShareAKey) {
  CheckOptions m{.check = AnswerCheck::kMath};
  EXPECT_EQ(vote_key("\\frac{1}{2}", m), vote_key("0.5", m));
  EXPECT_EQ(vote_key("\\boxed{x+1}", m), vote_key("x + 1", m));
  EXPECT_EQ(vote_key("", m), "");
  CheckOptions c{.check = AnswerCheck::kChoice};
  EXPECT_EQ(vote_key("answer: B", c), "B");
  EXPECT_EQ(parse_answer_check("math"), AnswerCheck::kMath);
  EXPECT_THROW(parse_answer_check("regex"), Error);
}

}  // namespace
}  // namespace qad::eval
