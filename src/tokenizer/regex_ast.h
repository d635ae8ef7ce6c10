// The regex syntax tree and its parser (Oniguruma/Ruby syntax subset); compiled and matched in regex.cc.
#pragma once
#include <array>
#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace qad::tokenizer::regex_ast {

constexpr int kInf = std::numeric_limits<int>::max();

enum class NodeKind { kEmpty, kChar, kClass, kConcat, kAlt, kRepeat, kLook, kBol, kEol, kBos, kEos, kEosNl };

struct Node {
  NodeKind kind = NodeKind::kEmpty;
  std::array<uint32_t, 3> chars{};  // kChar: the code point and its case variants (repeats allowed)
  int cls = -1;                     // kClass: index into classes
  std::vector<Node> kids;           // kConcat, kAlt, kRepeat (1), kLook (1)
  int min = 1, max = 1;
  bool greedy = true, possessive = false;
  bool negate = false;  // kLook
};

// Parses `pattern`; character classes are appended to `classes` (nodes refer to them by index).
// Throws qad::Error naming the pattern and the offending construct.
Node parse(std::string_view pattern, std::vector<Regex::CharClass>& classes);

}  // namespace qad::tokenizer::regex_ast
