// Regex parser: pattern text -> syntax tree (regex_ast.h). Anything outside the subset is an error.
#include <algorithm>

#include "tokenizer/regex_ast.h"
#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace qad::tokenizer::regex_ast {
namespace {

// Simple case folding for (?i:...): ASCII letters plus the two non-ASCII code points that fold to ASCII
// (U+017F LONG S -> s, U+212A KELVIN SIGN -> k), as Oniguruma's Unicode case folding does.
std::array<uint32_t, 3> case_variants(uint32_t c) {
  auto lower = [](uint32_t x) { return (x >= 'A' && x <= 'Z') ? x + 32 : x; };
  uint32_t l = lower(c);
  if (c == 0x17F) l = 's';
  if (c == 0x212A) l = 'k';
  if (l >= 'a' && l <= 'z') {
    uint32_t extra = l - 32;
    if (l == 's') extra = 0x17F;
    if (l == 'k') extra = 0x212A;
    return {l, l - 32, extra};
  }
  return {c, c, c};
}

int hex(char h) {
  if (h >= '0' && h <= '9') return h - '0';
  if (h >= 'a' && h <= 'f') return h - 'a' + 10;
  if (h >= 'A' && h <= 'F') return h - 'A' + 10;
  return -1;
}


class Parser {
 public:
  Parser(std::string_view pat, std::vector<Regex::CharClass>& classes) : pat_(pat), classes_(classes) {}

  Node parse() {
    Node n = parse_alt();
    if (i_ < pat_.size()) error("unbalanced ')'");
    return n;
  }

  [[noreturn]] void error(const std::string& what) const {
    qad::fail("regex /{}/: {} at offset {} (supported: literals, ., [...], \\p{{L}} \\p{{N}} \\p{{M}} \\s \\S, "
              "(?:) (?i:) (?=) (?!), quantifiers * + ? {{m,n}} with lazy/possessive suffixes, | ^ $ \\A \\z)",
              pat_, what, i_);
  }

 private:
  bool more() const { return i_ < pat_.size(); }
  uint32_t peek() const {
    size_t j = i_;
    return utf8::decode(pat_, j);
  }
  uint32_t next() { return utf8::decode(pat_, i_); }
  bool eat(char c) {
    if (more() && pat_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }

  Node parse_alt() {
    Node alt;
    alt.kind = NodeKind::kAlt;
    alt.kids.push_back(parse_concat());
    while (eat('|')) alt.kids.push_back(parse_concat());
    if (alt.kids.size() == 1) return std::move(alt.kids[0]);
    return alt;
  }

  Node parse_concat() {
    Node cat;
    cat.kind = NodeKind::kConcat;
    while (more() && pat_[i_] != '|' && pat_[i_] != ')') {
      Node atom;
      if (parse_atom(&atom)) cat.kids.push_back(parse_quantifier(std::move(atom)));
    }
    if (cat.kids.size() == 1) return std::move(cat.kids[0]);
    if (cat.kids.empty()) return Node{};
    return cat;
  }

  bool parse_int(int* out) {
    size_t start = i_;
    long v = 0;
    while (more() && pat_[i_] >= '0' && pat_[i_] <= '9') {
      v = v * 10 + (pat_[i_] - '0');
      if (v > 100000) error("repeat count too large");
      ++i_;
    }
    *out = static_cast<int>(v);
    return i_ > start;
  }

  Node parse_quantifier(Node atom) {
    while (more()) {
      int mn, mx;
      const size_t save = i_;
      const char c = pat_[i_];
      if (c == '*') {
        ++i_, mn = 0, mx = kInf;
      } else if (c == '+') {
        ++i_, mn = 1, mx = kInf;
      } else if (c == '?') {
        ++i_, mn = 0, mx = 1;
      } else if (c == '{') {
        ++i_;
        bool has_min = parse_int(&mn);
        if (!has_min) mn = 0;
        mx = mn;
        bool ok = true;
        if (eat(',')) {
          if (!parse_int(&mx)) mx = kInf;
          ok = has_min || mx != kInf;
        } else {
          ok = has_min;
        }
        if (!ok || !eat('}')) {  // not a quantifier: '{' is a literal (Ruby syntax)
          i_ = save;
          return atom;
        }
        if (mx < mn) error("{m,n} with n < m");
      } else {
        return atom;
      }
      if (atom.kind == NodeKind::kEmpty || atom.kind == NodeKind::kBol || atom.kind == NodeKind::kEol ||
          atom.kind == NodeKind::kLook)
        error("quantifier without a repeatable operand");
      Node rep;
      rep.kind = NodeKind::kRepeat;
      rep.min = mn;
      rep.max = mx;
      if (eat('?')) {
        rep.greedy = false;
      } else if (c != '{' && eat('+')) {
        rep.possessive = true;
      }
      rep.kids.push_back(std::move(atom));
      atom = std::move(rep);
    }
    return atom;
  }

  Node make_char(uint32_t c) {
    Node n;
    n.kind = NodeKind::kChar;
    n.chars = icase_ ? case_variants(c) : std::array<uint32_t, 3>{c, c, c};
    return n;
  }

  Node make_class(Regex::CharClass cls) {
    cls.finalize();
    classes_.push_back(std::move(cls));
    Node n;
    n.kind = NodeKind::kClass;
    n.cls = static_cast<int>(classes_.size() - 1);
    return n;
  }

  // \p{...} name -> property bit.
  uint8_t property(const std::string& name) {
    if (name == "L" || name == "Letter") return unicode::kLetter;
    if (name == "N" || name == "Number") return unicode::kNumber;
    if (name == "M" || name == "Mark" || name == "Combining_Mark") return unicode::kMark;
    error("unsupported Unicode property \\p{" + name + "}");
  }

  // Parses an escape after '\'. Returns a code point, or sets *cls_out for class escapes.
  // `in_class`: inside [...], where anchors are not allowed.
  enum class Esc { kChar, kProps, kPropsNone, kAnchor };
  Esc parse_escape(uint32_t* cp, uint8_t* props, NodeKind* anchor, bool in_class) {
    if (!more()) error("trailing backslash");
    const uint32_t c = next();
    switch (c) {
      case 'n': *cp = '\n'; return Esc::kChar;
      case 'r': *cp = '\r'; return Esc::kChar;
      case 't': *cp = '\t'; return Esc::kChar;
      case 'f': *cp = '\f'; return Esc::kChar;
      case 'v': *cp = '\v'; return Esc::kChar;
      case 'a': *cp = 7; return Esc::kChar;
      case 'e': *cp = 27; return Esc::kChar;
      case 's': *props = unicode::kWhiteSpace; return Esc::kProps;
      case 'S': *props = unicode::kWhiteSpace; return Esc::kPropsNone;
      case 'p':
      case 'P': {
        if (!eat('{')) error("\\p without {name}");
        bool neg = c == 'P';
        if (eat('^')) neg = !neg;
        const size_t start = i_;
        while (more() && pat_[i_] != '}') ++i_;
        if (!more()) error("unterminated \\p{");
        std::string name(pat_.substr(start, i_ - start));
        ++i_;
        *props = property(name);
        return neg ? Esc::kPropsNone : Esc::kProps;
      }
      case 'x': {
        uint32_t v = 0;
        int digits = 0;
        if (eat('{')) {
          while (more() && pat_[i_] != '}') {
            int h = hex(pat_[i_++]);
            if (h < 0 || ++digits > 6) error("bad \\x{...}");
            v = v * 16 + static_cast<uint32_t>(h);
          }
          if (!eat('}') || digits == 0) error("bad \\x{...}");
        } else {
          while (digits < 2 && more() && hex(pat_[i_]) >= 0) v = v * 16 + static_cast<uint32_t>(hex(pat_[i_++])), ++digits;
          if (digits == 0) error("bad \\x escape");
        }
        if (v > 0x10FFFF) error("code point out of range");
        *cp = v;
        return Esc::kChar;
      }
      case 'u': {
        uint32_t v = 0;
        for (int k = 0; k < 4; ++k) {
          if (!more()) error("bad \\u escape");
          const int d = hex(pat_[i_++]);
          if (d < 0) error("bad \\u escape");
          v = v * 16 + static_cast<uint32_t>(d);
        }
        *cp = v;
        return Esc::kChar;
      }
      case 'A':
      case 'z':
      case 'Z':
        if (in_class) error("anchor inside a class");
        *anchor = c == 'A' ? NodeKind::kBos : c == 'z' ? NodeKind::kEos : NodeKind::kEosNl;
        return Esc::kAnchor;
      default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
          error(std::string("unsupported escape \\") + static_cast<char>(c));
        *cp = c;  // escaped punctuation is literal
        return Esc::kChar;
    }
  }

  Node parse_class() {
    Regex::CharClass cls;
    if (eat('^')) cls.negated = true;
    bool first = true;
    auto add_range = [&](uint32_t lo, uint32_t hi) {
      cls.ranges.push_back({lo, hi});
      if (icase_) {
        for (uint32_t c = lo; c <= hi && c < 0x80; ++c) {
          for (uint32_t v : case_variants(c)) cls.ranges.push_back({v, v});
        }
      }
    };
    while (true) {
      if (!more()) error("unterminated [");
      if (pat_[i_] == ']' && !first) {
        ++i_;
        break;
      }
      first = false;
      if (pat_[i_] == '[') error("nested classes are not supported");
      if (pat_.substr(i_, 2) == "&&") error("class intersection is not supported");
      uint32_t lo;
      if (eat('\\')) {
        uint8_t props = 0;
        NodeKind anchor;
        Esc e = parse_escape(&lo, &props, &anchor, true);
        if (e == Esc::kProps) {
          cls.props_any |= props;
          continue;
        }
        if (e == Esc::kPropsNone) {
          cls.props_none.push_back(props);
          continue;
        }
      } else {
        lo = next();
      }
      uint32_t hi = lo;
      if (pat_.size() > i_ + 1 && pat_[i_] == '-' && pat_[i_ + 1] != ']') {
        ++i_;
        if (eat('\\')) {
          uint8_t props = 0;
          NodeKind anchor;
          if (parse_escape(&hi, &props, &anchor, true) != Esc::kChar) error("class range ends in a class");
        } else {
          hi = next();
        }
        if (hi < lo) error("class range out of order");
      }
      add_range(lo, hi);
    }
    return make_class(std::move(cls));
  }

  // Returns false for constructs that produce no node (a bare (?i) flag group).
  bool parse_atom(Node* out) {
    const char c = pat_[i_];
    if (c == '(') {
      ++i_;
      bool saved_icase = icase_;
      Node look;
      bool is_look = false;
      if (eat('?')) {
        if (eat(':')) {
        } else if (more() && (pat_[i_] == '=' || pat_[i_] == '!')) {
          is_look = true;
          look.kind = NodeKind::kLook;
          look.negate = pat_[i_++] == '!';
        } else if (more() && (pat_[i_] == 'i' || pat_[i_] == '-')) {
          bool on = true;
          while (more() && pat_[i_] != ':' && pat_[i_] != ')') {
            const char f = pat_[i_++];
            if (f == '-') on = false;
            else if (f == 'i') icase_ = on;
            else error(std::string("unsupported inline flag '") + f + "'");
          }
          if (eat(')')) return false;  // (?i) applies to the rest of the enclosing group
          if (!eat(':')) error("bad flag group");
        } else if (more() && pat_[i_] == '<' && pat_.size() > i_ + 1 && pat_[i_ + 1] != '=' && pat_[i_ + 1] != '!') {
          while (more() && pat_[i_] != '>') ++i_;  // named group: treated as a plain group
          if (!eat('>')) error("bad named group");
        } else {
          error("unsupported group type (look-behind, atomic or conditional)");
        }
      }
      Node body = parse_alt();
      icase_ = saved_icase;
      if (!eat(')')) error("missing ')'");
      if (is_look) {
        look.kids.push_back(std::move(body));
        *out = std::move(look);
      } else {
        *out = std::move(body);
      }
      return true;
    }
    ++i_;
    switch (c) {
      case '[':
        *out = parse_class();
        return true;
      case '.': {
        Regex::CharClass any;
        any.negated = true;
        any.ranges.push_back({'\n', '\n'});
        *out = make_class(std::move(any));
        return true;
      }
      case '^': out->kind = NodeKind::kBol; return true;
      case '$': out->kind = NodeKind::kEol; return true;
      case '*':
      case '+':
      case '?': error("quantifier without operand");
      case '\\': {
        uint32_t cp = 0;
        uint8_t props = 0;
        NodeKind anchor = NodeKind::kEmpty;
        Esc e = parse_escape(&cp, &props, &anchor, false);
        if (e == Esc::kAnchor) {
          out->kind = anchor;
          return true;
        }
        if (e == Esc::kChar) {
          *out = make_char(cp);
          return true;
        }
        Regex::CharClass cls;
        if (e == Esc::kProps) cls.props_any = props;
        else cls.props_none.push_back(props);
        *out = make_class(std::move(cls));
        return true;
      }
      default:
        --i_;
        *out = make_char(next());
        return true;
    }
  }

  std::string_view pat_;
  std::vector<Regex::CharClass>& classes_;
  size_t i_ = 0;
  bool icase_ = false;
};

}  // namespace

Node parse(std::string_view pattern, std::vector<Regex::CharClass>& classes) { return Parser(pattern, classes).parse(); }

}  // namespace qad::tokenizer::regex_ast
