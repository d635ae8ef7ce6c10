// Answer extraction rules (docs/eval.md "Answer extraction"): plain string scanning, no regex engine.
#include "eval/answer_extraction.h"

#include <fmt/format.h>

#include "util/error.h"

namespace qad::eval {
namespace {

constexpr std::pair<std::string_view, AnswerRule> kRules[] = {
    {"after-think", AnswerRule::kAfterThink}, {"last-number", AnswerRule::kLastNumber},
    {"hashes", AnswerRule::kHashes},          {"boxed", AnswerRule::kBoxed},
    {"full", AnswerRule::kFull},
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The last number in `s`: an optional '-' directly before the digits, digit groups separated by ','
// (dropped) when a digit follows, and one '.' followed by digits. A trailing '.' (end of sentence) is not
// part of the number.
std::string last_number(std::string_view s) {
  std::string last;
  size_t i = 0;
  while (i < s.size()) {
    if (!is_digit(s[i])) {
      ++i;
      continue;
    }
    std::string num;
    if (i > 0 && s[i - 1] == '-') num.push_back('-');
    bool seen_dot = false;
    while (i < s.size()) {
      if (is_digit(s[i])) {
        num.push_back(s[i++]);
      } else if (s[i] == ',' && i + 1 < s.size() && is_digit(s[i + 1]) && !seen_dot) {
        ++i;  // thousands separator
      } else if (s[i] == '.' && !seen_dot && i + 1 < s.size() && is_digit(s[i + 1])) {
        seen_dot = true;
        num.push_back(s[i++]);
      } else {
        break;
      }
    }
    last = std::move(num);
  }
  return last;
}

std::string last_boxed(std::string_view s) {
  constexpr std::string_view kTag = "\\boxed{";
  const size_t at = s.rfind(kTag);
  if (at == std::string_view::npos) return {};
  size_t i = at + kTag.size();
  int depth = 1;
  const size_t begin = i;
  for (; i < s.size(); ++i) {
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return std::string(strip(s.substr(begin, i - begin)));
  }
  return {};  // unbalanced: no answer
}

}  // namespace

std::string_view strip(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

AnswerRule parse_answer_rule(std::string_view name) {
  for (const auto& [n, r] : kRules) {
    if (n == name) return r;
  }
  fail("unknown answer rule '{}': choose one of after-think, last-number, hashes, boxed, full", name);
}

std::string_view answer_rule_name(AnswerRule rule) {
  for (const auto& [n, r] : kRules) {
    if (r == rule) return n;
  }
  return "?";
}

std::vector<std::string_view> answer_rule_names() {
  std::vector<std::string_view> names;
  for (const auto& [n, r] : kRules) names.push_back(n);
  return names;
}

std::string extract_answer(std::string_view text, AnswerRule rule) {
  switch (rule) {
    case AnswerRule::kAfterThink: {
      constexpr std::string_view kClose = "</think>";
      const size_t at = text.rfind(kClose);
      return std::string(strip(at == std::string_view::npos ? text : text.substr(at + kClose.size())));
    }
    case AnswerRule::kLastNumber:
      return last_number(text);
    case AnswerRule::kHashes: {
      const size_t at = text.rfind("####");
      if (at == std::string_view::npos) return {};
      std::string out;
      for (char c : strip(text.substr(at + 4))) {
        if (c != ',') out.push_back(c);
      }
      return out;
    }
    case AnswerRule::kBoxed:
      return last_boxed(text);
    case AnswerRule::kFull:
      return std::string(strip(text));
  }
  return {};
}

}  // namespace qad::eval
