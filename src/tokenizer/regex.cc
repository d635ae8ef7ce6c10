// Regex: parser (pattern -> AST), compiler (AST -> backtracking program) and matcher. See regex.h.
#include "tokenizer/regex.h"

#include <algorithm>
#include <limits>
#include <optional>

#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

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

}  // namespace

struct Inst {
  enum Op : uint8_t { kChar, kClass, kSplit, kJmp, kRun, kLook, kBol, kEol, kBos, kEos, kEosNl, kMatch } op;
  bool greedy = true, possessive = false, negate = false;
  std::array<uint32_t, 3> chars{};
  int cls = -1;
  int x = 0, y = 0;  // kSplit: preferred, other; kJmp: x; kLook: x = sub-program index
  int min = 0, max = 0;
  int guard = -1;  // kSplit: index into guards; -1 = none
};

// Fast rejection of a split's preferred branch: first-character sets.
struct Guard {
  std::array<uint64_t, 4> latin1{};
  bool props_exact = false;  // for cp >= 256, membership depends only on props(cp) & 15
  uint16_t props_ok = 0;     // bit v set: a code point with props v may start the branch
  bool may_start(uint32_t cp) const {
    if (cp < 256) return (latin1[cp >> 6] >> (cp & 63)) & 1;
    if (!props_exact) return true;
    return (props_ok >> (unicode::props(cp) & 15)) & 1;
  }
};

struct Regex::Program {
  std::vector<CharClass> classes;
  std::vector<Guard> guards;
  std::vector<std::vector<Inst>> progs;  // [0] = main; others: look-ahead bodies
};

bool Regex::CharClass::matches_slow(uint32_t cp) const {
  const uint8_t p = unicode::props(cp);
  bool m = (p & props_any) != 0;
  for (uint8_t mask : props_none) m = m || (p & mask) == 0;
  if (!m) {
    for (const auto& r : ranges) {
      if (cp >= r.first && cp <= r.second) {
        m = true;
        break;
      }
    }
  }
  return m != negated;
}

void Regex::CharClass::finalize() {
  latin1 = {};
  for (uint32_t c = 0; c < 256; ++c)
    if (matches_slow(c)) latin1[c >> 6] |= uint64_t{1} << (c & 63);
}

namespace {

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

bool nullable(const Node& n) {
  switch (n.kind) {
    case NodeKind::kChar:
    case NodeKind::kClass: return false;
    case NodeKind::kConcat:
      return std::all_of(n.kids.begin(), n.kids.end(), nullable);
    case NodeKind::kAlt:
      return std::any_of(n.kids.begin(), n.kids.end(), nullable);
    case NodeKind::kRepeat: return n.min == 0 || nullable(n.kids[0]);
    default: return true;  // empty, anchors, look-arounds consume nothing
  }
}

class Compiler {
 public:
  explicit Compiler(Regex::Program& p) : p_(p) {}

  int compile_program(const Node& root) {
    const int idx = static_cast<int>(p_.progs.size());
    p_.progs.emplace_back();
    std::vector<Inst> code;
    emit(root, code);
    code.push_back(Inst{Inst::kMatch});
    p_.progs[static_cast<size_t>(idx)] = std::move(code);
    return idx;
  }

 private:
  // First-character set of a node as a union of classes/chars; false when unknown or nullable.
  bool first_set(const Node& n, Guard& g, bool& exact) {
    switch (n.kind) {
      case NodeKind::kChar:
        for (uint32_t c : n.chars) {
          if (c < 256) g.latin1[c >> 6] |= uint64_t{1} << (c & 63);
          else exact = false;
        }
        return true;
      case NodeKind::kClass: {
        const auto& cls = p_.classes[static_cast<size_t>(n.cls)];
        for (int k = 0; k < 4; ++k) g.latin1[static_cast<size_t>(k)] |= cls.latin1[static_cast<size_t>(k)];
        bool has_high_ranges = std::any_of(cls.ranges.begin(), cls.ranges.end(),
                                           [](const auto& r) { return r.second >= 256; });
        if (has_high_ranges) exact = false;
        for (uint8_t v = 0; v < 16; ++v) {
          bool m = (v & cls.props_any) != 0;
          for (uint8_t mask : cls.props_none) m = m || (v & mask) == 0;
          if (m != cls.negated) g.props_ok |= static_cast<uint16_t>(1u << v);
        }
        // A negated class with ranges above 255 may still match where the props say no: stay exact only
        // when the ranges cannot change the outcome for cp >= 256.
        if (cls.negated && has_high_ranges) exact = false;
        return true;
      }
      case NodeKind::kConcat: {
        for (const Node& k : n.kids) {
          if (k.kind == NodeKind::kLook || k.kind == NodeKind::kBol || k.kind == NodeKind::kEol ||
              k.kind == NodeKind::kBos || k.kind == NodeKind::kEos || k.kind == NodeKind::kEosNl)
            return false;
          if (!first_set(k, g, exact)) return false;
          if (!nullable(k)) return true;
        }
        return false;
      }
      case NodeKind::kAlt:
        for (const Node& k : n.kids)
          if (!first_set(k, g, exact)) return false;
        return true;
      case NodeKind::kRepeat: return first_set(n.kids[0], g, exact);
      case NodeKind::kEmpty: return true;
      default: return false;
    }
  }

  int make_guard(const Node& n) {
    Guard g;
    bool exact = true;
    if (nullable(n) || !first_set(n, g, exact)) return -1;
    g.props_exact = exact;
    p_.guards.push_back(g);
    return static_cast<int>(p_.guards.size() - 1);
  }

  static int here(const std::vector<Inst>& code) { return static_cast<int>(code.size()); }

  int single_char_class(const Node& n) {
    if (n.kind == NodeKind::kClass) return n.cls;
    if (n.kind == NodeKind::kChar) {
      Regex::CharClass cls;
      for (uint32_t c : n.chars) cls.ranges.push_back({c, c});
      cls.finalize();
      p_.classes.push_back(std::move(cls));
      return static_cast<int>(p_.classes.size() - 1);
    }
    return -1;
  }

  void emit_split(std::vector<Inst>& code, const Node* preferred_branch, size_t* at) {
    Inst s{Inst::kSplit};
    s.guard = preferred_branch ? make_guard(*preferred_branch) : -1;
    *at = code.size();
    code.push_back(s);
  }

  void emit(const Node& n, std::vector<Inst>& code) {
    switch (n.kind) {
      case NodeKind::kEmpty: return;
      case NodeKind::kChar: {
        Inst i{Inst::kChar};
        i.chars = n.chars;
        code.push_back(i);
        return;
      }
      case NodeKind::kClass: {
        Inst i{Inst::kClass};
        i.cls = n.cls;
        code.push_back(i);
        return;
      }
      case NodeKind::kConcat:
        for (const Node& k : n.kids) emit(k, code);
        return;
      case NodeKind::kAlt: {
        std::vector<size_t> jumps;
        for (size_t k = 0; k < n.kids.size(); ++k) {
          if (k + 1 < n.kids.size()) {
            size_t at;
            emit_split(code, &n.kids[k], &at);
            code[at].x = here(code);
            emit(n.kids[k], code);
            jumps.push_back(code.size());
            code.push_back(Inst{Inst::kJmp});
            code[at].y = here(code);
          } else {
            emit(n.kids[k], code);
          }
        }
        for (size_t j : jumps) code[j].x = here(code);
        return;
      }
      case NodeKind::kRepeat: {
        const Node& body = n.kids[0];
        const int cls = (n.greedy || n.possessive) ? single_char_class(body) : -1;
        if (cls >= 0) {
          Inst i{Inst::kRun};
          i.cls = cls;
          i.min = n.min;
          i.max = n.max;
          i.possessive = n.possessive;
          code.push_back(i);
          return;
        }
        if (n.possessive) qad::fail("regex: possessive quantifier on a group is not supported");
        if (n.max == kInf && nullable(body)) qad::fail("regex: unbounded repeat of a pattern that can match empty");
        for (int k = 0; k < n.min; ++k) emit(body, code);
        if (n.max == kInf) {
          size_t at;
          emit_split(code, n.greedy ? &body : nullptr, &at);
          emit(body, code);
          Inst j{Inst::kJmp};
          j.x = static_cast<int>(at);
          code.push_back(j);
          set_split(code[at], static_cast<int>(at) + 1, here(code), n.greedy);
        } else {
          std::vector<size_t> splits;
          for (int k = n.min; k < n.max; ++k) {
            size_t at;
            emit_split(code, n.greedy ? &body : nullptr, &at);
            splits.push_back(at);
            emit(body, code);
          }
          for (size_t at : splits) set_split(code[at], static_cast<int>(at) + 1, here(code), n.greedy);
        }
        return;
      }
      case NodeKind::kLook: {
        Compiler sub(p_);
        const int idx = sub.compile_program(n.kids[0]);
        Inst i{Inst::kLook};
        i.x = idx;
        i.negate = n.negate;
        code.push_back(i);
        return;
      }
      case NodeKind::kBol: code.push_back(Inst{Inst::kBol}); return;
      case NodeKind::kEol: code.push_back(Inst{Inst::kEol}); return;
      case NodeKind::kBos: code.push_back(Inst{Inst::kBos}); return;
      case NodeKind::kEos: code.push_back(Inst{Inst::kEos}); return;
      case NodeKind::kEosNl: code.push_back(Inst{Inst::kEosNl}); return;
    }
  }

  static void set_split(Inst& s, int body, int exit, bool greedy) {
    s.x = greedy ? body : exit;
    s.y = greedy ? exit : body;
  }

  Regex::Program& p_;
};

struct Frame {
  int pc;
  size_t pos;
  size_t lo;  // kNoRun for a plain alternative; else a greedy run that may give back chars down to lo
};
constexpr size_t kNoRun = std::numeric_limits<size_t>::max();

class Matcher {
 public:
  Matcher(const Regex::Program& p, std::string_view t) : p_(p), t_(t) {}

  // Anchored match of program `prog` at `pos`; on success *end is the match end.
  bool run(int prog, size_t pos, size_t* end, std::vector<Frame>& stack) const {
    const Inst* code = p_.progs[static_cast<size_t>(prog)].data();
    const size_t base = stack.size();
    const size_t n = t_.size();
    int pc = 0;
    while (true) {
      const Inst& in = code[pc];
      bool ok = true;
      switch (in.op) {
        case Inst::kChar: {
          if (pos >= n) {
            ok = false;
            break;
          }
          size_t q = pos;
          const uint32_t c = utf8::decode(t_, q);
          if (c == in.chars[0] || c == in.chars[1] || c == in.chars[2]) {
            pos = q;
            ++pc;
          } else {
            ok = false;
          }
          break;
        }
        case Inst::kClass: {
          if (pos >= n) {
            ok = false;
            break;
          }
          size_t q = pos;
          const uint32_t c = utf8::decode(t_, q);
          if (p_.classes[static_cast<size_t>(in.cls)].matches(c)) {
            pos = q;
            ++pc;
          } else {
            ok = false;
          }
          break;
        }
        case Inst::kSplit: {
          if (in.guard >= 0) {
            bool can = false;
            if (pos < n) {
              size_t q = pos;
              can = p_.guards[static_cast<size_t>(in.guard)].may_start(utf8::decode(t_, q));
            }
            if (!can) {
              pc = in.y;
              break;
            }
          }
          stack.push_back({in.y, pos, kNoRun});
          pc = in.x;
          break;
        }
        case Inst::kJmp: pc = in.x; break;
        case Inst::kRun: {
          const auto& cls = p_.classes[static_cast<size_t>(in.cls)];
          int count = 0;
          size_t lo = pos;
          while (count < in.max && pos < n) {
            size_t q = pos;
            if (!cls.matches(utf8::decode(t_, q))) break;
            pos = q;
            if (++count == in.min) lo = pos;
          }
          if (count < in.min) {
            ok = false;
            break;
          }
          if (!in.possessive && count > in.min) stack.push_back({pc + 1, pos, lo});
          ++pc;
          break;
        }
        case Inst::kLook: {
          size_t e;
          const bool m = run(in.x, pos, &e, stack);
          if (m == in.negate) ok = false;
          else ++pc;
          break;
        }
        case Inst::kBol: ok = pos == 0 || t_[pos - 1] == '\n'; ++pc; break;
        case Inst::kEol: ok = pos == n || t_[pos] == '\n'; ++pc; break;
        case Inst::kBos: ok = pos == 0; ++pc; break;
        case Inst::kEos: ok = pos == n; ++pc; break;
        case Inst::kEosNl: ok = pos == n || (pos + 1 == n && t_[pos] == '\n'); ++pc; break;
        case Inst::kMatch:
          *end = pos;
          stack.resize(base);
          return true;
      }
      if (ok) continue;
      // Backtrack.
      if (stack.size() == base) return false;
      Frame& f = stack.back();
      pc = f.pc;
      if (f.lo == kNoRun) {
        pos = f.pos;
        stack.pop_back();
      } else {
        pos = utf8::prev(t_, f.pos);  // give back one character of the greedy run
        if (pos > f.lo) f.pos = pos;
        else stack.pop_back();
      }
    }
  }

 private:
  const Regex::Program& p_;
  std::string_view t_;
};

}  // namespace

Regex::Regex(std::string_view pattern) : pattern_(pattern) {
  if (utf8::valid_prefix(pattern) != pattern.size()) qad::fail("regex /{}/: pattern is not valid UTF-8", pattern);
  auto prog = std::make_shared<Program>();
  Node root = Parser(pattern, prog->classes).parse();
  try {
    Compiler(*prog).compile_program(root);
  } catch (const qad::Error& e) {
    qad::fail("regex /{}/: {}", pattern, e.what());
  }
  prog_ = std::move(prog);
}

bool Regex::find(std::string_view text, size_t from, size_t* start, size_t* end) const {
  thread_local std::vector<Frame> stack;
  Matcher m(*prog_, text);
  for (size_t pos = from; pos <= text.size();) {
    stack.clear();
    if (m.run(0, pos, end, stack)) {
      *start = pos;
      return true;
    }
    if (pos == text.size()) break;
    pos += utf8::seq_len(static_cast<unsigned char>(text[pos]));
  }
  return false;
}

}  // namespace qad::tokenizer
