// Answer checkers (answer_check.h): plain string scanning, no regex engine.
#include "eval/answer_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "eval/answer_extraction.h"
#include "util/error.h"

namespace qad::eval {
namespace {

constexpr std::pair<std::string_view, AnswerCheck> kChecks[] = {
    {"exact", AnswerCheck::kExact}, {"numeric", AnswerCheck::kNumeric},
    {"math", AnswerCheck::kMath},   {"choice", AnswerCheck::kChoice},
};

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
}

// The balanced {...} group starting at s[open] == '{': its contents and the index after its '}'.
std::optional<std::pair<std::string, size_t>> brace_group(const std::string& s, size_t open) {
  if (open >= s.size() || s[open] != '{') return std::nullopt;
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return std::make_pair(s.substr(open + 1, i - open - 1), i + 1);
  }
  return std::nullopt;
}

// "\cmd{X}" -> "X" for every occurrence (text-like wrappers).
void unwrap_command(std::string& s, std::string_view cmd) {
  for (size_t at = s.find(cmd); at != std::string::npos; at = s.find(cmd, at)) {
    auto g = brace_group(s, at + cmd.size());
    if (!g) {
      at += cmd.size();
      continue;
    }
    s.replace(at, g->second - at, g->first);
  }
}

// \frac12 -> \frac{1}{2}, \frac1{x} -> \frac{1}{x}, \sqrt2 -> \sqrt{2}: single-character arguments braced.
void brace_short_arguments(std::string& s, std::string_view cmd, int args) {
  for (size_t at = s.find(cmd); at != std::string::npos; at = s.find(cmd, at + cmd.size())) {
    size_t i = at + cmd.size();
    for (int a = 0; a < args && i < s.size(); ++a) {
      if (s[i] == '{') {
        auto g = brace_group(s, i);
        if (!g) return;
        i = g->second;
      } else if (s[i] != '\\') {
        s = s.substr(0, i) + '{' + s[i] + '}' + s.substr(i + 1);
        i += 3;
      } else {
        break;
      }
    }
  }
}

// "2.50" -> "2.5", "3.0" -> "3", ".5" -> "0.5", "1,000" -> "1000" for a string that is a plain decimal.
std::string canonical_decimal(std::string s) {
  std::string digits;
  size_t i = 0;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) ++i;
  bool dot = false, any = false, groups = false;
  for (size_t j = i; j < s.size(); ++j) {
    if (is_digit(s[j])) any = true;
    else if (s[j] == '.' && !dot) dot = true;
    else if (s[j] == ',' && !dot) groups = true;
    else return s;
  }
  if (!any) return s;
  if (groups) {  // only well-formed thousands groups: d{1,3}(,ddd)+
    std::string body = s.substr(i, dot ? s.find('.') - i : std::string::npos);
    size_t begin = 0;
    for (int part = 0;; ++part) {
      const size_t comma = body.find(',', begin);
      const size_t len = (comma == std::string::npos ? body.size() : comma) - begin;
      if (part == 0 ? (len < 1 || len > 3) : len != 3) return s;  // d{1,3}(,ddd)+
      if (comma == std::string::npos) break;
      begin = comma + 1;
    }
    std::string no_commas;
    for (char c : s) {
      if (c != ',') no_commas.push_back(c);
    }
    s = no_commas;
  }
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  const size_t sign = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (sign < s.size() && s[sign] == '.') s = s.substr(0, sign) + '0' + s.substr(sign);
  if (s[0] == '+') s.erase(0, 1);
  if (s == "-0") s = "0";
  return s;
}

std::optional<double> parse_plain(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::string clean;
  for (char c : s) {
    if (c != ',') clean.push_back(c);
  }
  if (clean.size() != s.size()) {  // commas only as thousands separators
    if (canonical_decimal(std::string(s)) != canonical_decimal(clean)) return std::nullopt;
  }
  if (!is_digit(clean[0]) && clean[0] != '-' && clean[0] != '+' && clean[0] != '.') return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(clean.c_str(), &end);
  if (end != clean.c_str() + clean.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

}  // namespace

AnswerCheck parse_answer_check(std::string_view name) {
  for (const auto& [n, c] : kChecks) {
    if (n == name) return c;
  }
  fail("unknown answer check '{}': choose one of exact, numeric, math, choice", name);
}

std::string_view answer_check_name(AnswerCheck check) {
  for (const auto& [n, c] : kChecks) {
    if (c == check) return n;
  }
  return "?";
}

std::string normalize_math_answer(std::string_view input) {
  std::string s(strip(input));
  // 1. A whole \boxed{...} / \fbox{...} answer: its contents.
  for (std::string_view box : {"\\boxed", "\\fbox"}) {
    if (s.rfind(box, 0) == 0) {
      auto g = brace_group(s, box.size());
      if (g && g->second == s.size()) s = g->first;
    }
  }
  // 2. Math delimiters and spacing / sizing commands.
  for (std::string_view d : {"\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\quad", "\\qquad",
                             "\\(", "\\)", "\\[", "\\]", "$"}) {
    replace_all(s, d, "");
  }
  // 3. Text wrappers keep their contents.
  for (std::string_view cmd : {"\\text", "\\textbf", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox"}) unwrap_command(s, cmd);
  // 4. Fraction spellings.
  replace_all(s, "\\dfrac", "\\frac");
  replace_all(s, "\\tfrac", "\\frac");
  // 5. Degrees and percent signs go.
  for (std::string_view d : {"^{\\circ}", "^\\circ", "\xc2\xb0", "\\%", "%"}) replace_all(s, d, "");
  // 6. All whitespace goes.
  std::string compact;
  for (char c : s) {
    if (!std::isspace(static_cast<unsigned char>(c))) compact.push_back(c);
  }
  s = compact;
  // 7. A leading "x=" (one variable name) goes.
  if (s.size() > 2 && is_alpha(s[0]) && s[1] == '=') s.erase(0, 2);
  // 8. Short arguments get braces: \frac12 -> \frac{1}{2}, \sqrt3 -> \sqrt{3}.
  brace_short_arguments(s, "\\frac", 2);
  brace_short_arguments(s, "\\sqrt", 1);
  // 9. A trailing period goes.
  while (!s.empty() && s.back() == '.') s.pop_back();
  // 10. Plain decimals in canonical form: 2.50 -> 2.5, 3.0 -> 3, .5 -> 0.5, 1,000 -> 1000.
  return canonical_decimal(s);
}

std::optional<double> parse_number(std::string_view text) {
  std::string s(strip(text));
  if (!s.empty() && s.back() == '%') s.pop_back();
  if (s.rfind("\\frac{", 0) == 0 || s.rfind("-\\frac{", 0) == 0) {
    const bool neg = s[0] == '-';
    auto num = brace_group(s, neg ? 6 : 5);
    if (!num) return std::nullopt;
    auto den = brace_group(s, num->second);
    if (!den || den->second != s.size()) return std::nullopt;
    auto a = parse_plain(num->first), b = parse_plain(den->first);
    if (!a || !b || *b == 0) return std::nullopt;
    return (neg ? -1 : 1) * *a / *b;
  }
  if (const size_t slash = s.find('/'); slash != std::string::npos) {
    auto a = parse_plain(std::string_view(s).substr(0, slash)), b = parse_plain(std::string_view(s).substr(slash + 1));
    if (!a || !b || *b == 0) return std::nullopt;
    return *a / *b;
  }
  return parse_plain(s);
}

std::string extract_choice_letter(std::string_view text, int num_choices) {
  const char last_letter = static_cast<char>('A' + std::min(num_choices, 26) - 1);
  auto valid = [&](char c) { return c >= 'A' && c <= last_letter; };
  // A lone letter, optionally as "(B)", "B.", "B)" (after stripping).
  auto lone = [&](std::string_view t) -> char {
    t = strip(t);
    if (t.size() >= 3 && t.front() == '(' && t[2] == ')') t = t.substr(1, 1);
    while (t.size() > 1 && (t.back() == '.' || t.back() == ')' || t.back() == ':')) t.remove_suffix(1);
    return t.size() == 1 && valid(t[0]) ? t[0] : 0;
  };
  const std::string box = extract_answer(text, AnswerRule::kBoxed);
  if (!box.empty()) {
    std::string b = box;
    unwrap_command(b, "\\text");
    if (char c = lone(b)) return std::string(1, c);
  }
  std::string lower(text);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (size_t at = lower.rfind("answer"); at != std::string::npos; at = at == 0 ? std::string::npos : lower.rfind("answer", at - 1)) {
    size_t i = at + 6;
    auto skip = [&](std::string_view w) {
      while (i < text.size() && (text[i] == ' ' || text[i] == '*')) ++i;
      if (lower.compare(i, w.size(), w) == 0) i += w.size();
    };
    skip("is");
    skip(":");
    while (i < text.size() && (text[i] == ' ' || text[i] == '*' || text[i] == '(')) ++i;
    if (i < text.size() && valid(text[i]) && (i + 1 == text.size() || !is_alpha(text[i + 1]))) {
      return std::string(1, text[i]);
    }
  }
  for (size_t at = text.rfind('('); at != std::string_view::npos; at = at == 0 ? std::string_view::npos : text.rfind('(', at - 1)) {
    if (at + 2 < text.size() && valid(text[at + 1]) && text[at + 2] == ')') return std::string(1, text[at + 1]);
  }
  if (char c = lone(text)) return std::string(1, c);
  return {};
}

std::string_view answer_region(std::string_view text) {
  constexpr std::string_view kOpen = "<think>", kClose = "</think>";
  const size_t close = text.rfind(kClose);
  if (close != std::string_view::npos) return text.substr(close + kClose.size());
  return text.find(kOpen) != std::string_view::npos ? std::string_view() : text;
}

std::string vote_key(std::string_view prediction, const CheckOptions& o) {
  switch (o.check) {
    case AnswerCheck::kExact: return std::string(strip(prediction));
    case AnswerCheck::kNumeric: {
      auto v = parse_number(prediction);
      return v ? fmt::format("{:.12g}", *v) : std::string();
    }
    case AnswerCheck::kMath: {
      const auto n = normalize_math_answer(prediction);
      auto v = parse_number(n);
      return v ? fmt::format("{:.12g}", *v) : n;
    }
    case AnswerCheck::kChoice: return extract_choice_letter(prediction);
  }
  return {};
}

bool answer_matches(std::string_view prediction, std::string_view answer, const CheckOptions& o) {
  auto close = [&](double p, double a) { return std::fabs(p - a) <= o.abs_tol + o.rel_tol * std::fabs(a); };
  switch (o.check) {
    case AnswerCheck::kExact: return !strip(prediction).empty() && strip(prediction) == strip(answer);
    case AnswerCheck::kNumeric: {
      auto p = parse_number(prediction), a = parse_number(answer);
      return p && a && close(*p, *a);
    }
    case AnswerCheck::kMath: {
      const auto p = normalize_math_answer(prediction), a = normalize_math_answer(answer);
      if (p.empty()) return false;
      if (p == a) return true;
      auto pv = parse_number(p), av = parse_number(a);
      return pv && av && close(*pv, *av);
    }
    case AnswerCheck::kChoice: {
      const auto p = extract_choice_letter(prediction), a = extract_choice_letter(answer);
      return !p.empty() && p == a;
    }
  }
  return false;
}

}  // namespace qad::eval
