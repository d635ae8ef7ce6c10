// Regex: compiler (syntax tree from regex_parse.cc -> backtracking program) and matcher. See regex.h.
#include "tokenizer/regex.h"

#include <algorithm>
#include <limits>

#include "tokenizer/regex_ast.h"
#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

using regex_ast::kInf;
using regex_ast::Node;
using regex_ast::NodeKind;

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
  Node root = regex_ast::parse(pattern, prog->classes);
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