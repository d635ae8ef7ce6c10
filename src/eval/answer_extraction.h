// Answer extraction for generative tasks: the rule that turns a model's generated text into the string
// compared with the task's `answer` (exact match). Rules and their exact definitions: docs/eval.md.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace qad::eval {

enum class AnswerRule {
  kAfterThink,  // text after the last "</think>" (whole text if none), whitespace-stripped (tasks/arith's rule)
  kLastNumber,  // the last number in the text ("-12", "3.5", "1,234" -> "1234")
  kHashes,      // text after the last "####" (GSM8K style), whitespace-stripped, "," removed from numbers
  kBoxed,       // contents of the last \boxed{...} (balanced braces), whitespace-stripped
  kFull,        // the whole text, whitespace-stripped
};

// "after-think", "last-number", "hashes", "boxed", "full"; throws qad::Error listing the choices otherwise.
AnswerRule parse_answer_rule(std::string_view name);
std::string_view answer_rule_name(AnswerRule rule);
std::vector<std::string_view> answer_rule_names();

// The extracted answer; an empty string where the rule finds nothing (which never matches an answer:
// tasks with an empty `answer` are refused when the task file is read).
std::string extract_answer(std::string_view generation, AnswerRule rule);

// Strips ASCII whitespace (space, \t, \n, \r, \f, \v) at both ends.
std::string_view strip(std::string_view s);

}  // namespace qad::eval
