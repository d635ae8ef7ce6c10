// Answer checkers: is an extracted prediction the task's answer? Exact string match, numeric match within
// a tolerance, math match after a documented LaTeX normalisation (docs/eval.md "Answer checkers"), and
// multiple-choice letters. Also the part of a thinking model's output that holds the answer. Torch-free.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qad::eval {

enum class AnswerCheck {
  kExact,    // prediction == answer after stripping whitespace
  kNumeric,  // both parse as numbers (1,234 / -3.5 / 3/4 / 1e-3) and |p - a| <= abs_tol + rel_tol * |a|
  kMath,     // normalize_math_answer strings equal, or both numbers as in kNumeric
  kChoice,   // the prediction's choice letter (extract_choice_letter) equals the answer's
};

AnswerCheck parse_answer_check(std::string_view name);  // "exact", "numeric", "math", "choice"
std::string_view answer_check_name(AnswerCheck check);

struct CheckOptions {
  AnswerCheck check = AnswerCheck::kExact;
  double abs_tol = 1e-6, rel_tol = 1e-6;
};

bool answer_matches(std::string_view prediction, std::string_view answer, const CheckOptions& options);

// The key majority voting groups predictions by: the normalised form under the check ("" = no answer).
std::string vote_key(std::string_view prediction, const CheckOptions& options);

// The math normalisation (docs/eval.md has the table of steps; tests/eval/answer_check_test.cc checks it).
std::string normalize_math_answer(std::string_view s);

// A number in `s` as a whole: optional sign, digits with optional ',' thousands groups, decimals, exponent,
// a fraction a/b or \frac{a}{b}, a trailing '%' (kept as the number, not divided by 100); else nothing.
std::optional<double> parse_number(std::string_view s);

// The chosen letter among the first `num_choices` (A, B, ...), or "" when none is found. In order: the
// contents of the last \boxed{}, the letter after the last "answer is" / "answer:" (any case), the last
// "(X)", the whole text being a letter ("B", "B.", "B)").
std::string extract_choice_letter(std::string_view text, int num_choices = 10);

// The part of a thinking model's output that holds its answer: the text after the last "</think>"; the
// whole text when it has no "<think>"; "" when a "<think>" is never closed (the budget ran out mid-thought).
std::string_view answer_region(std::string_view text);

}  // namespace qad::eval
