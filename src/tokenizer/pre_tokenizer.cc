// Pre-tokenizer implementations, following HF tokenizers' NormalizedString::split semantics: a pattern
// yields (span, is_match) runs covering the piece, a behaviour decides what to keep, empty pieces vanish.
#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <functional>

#include "tokenizer/normalizer.h"
#include "tokenizer/utf8.h"

namespace qad::tokenizer {

const std::array<uint32_t, 256>& byte_to_char() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[static_cast<size_t>(b)] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[static_cast<size_t>(b)] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[static_cast<size_t>(b)] = true;
    uint32_t n = 0;
    for (size_t b = 0; b < 256; ++b) t[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
    return t;
  }();
  return table;
}

int char_to_byte(uint32_t cp) {
  static const std::array<int16_t, 512> inv = [] {
    std::array<int16_t, 512> t;
    t.fill(-1);
    for (size_t b = 0; b < 256; ++b) t[byte_to_char()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < 512 ? inv[cp] : -1;
}

std::string to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) utf8::append(out, byte_to_char()[b]);
  return out;
}

namespace {

struct Run {
  size_t start, end;
  bool is_match;
};

// Applies a delimiter behaviour to runs covering `in` and appends the kept non-empty pieces.
void apply_behavior(const Piece& in, const std::vector<Run>& runs, SplitBehavior b, std::vector<Piece>& out) {
  std::vector<Run> splits;  // is_match here means "remove"
  switch (b) {
    case SplitBehavior::kIsolated:
      for (Run r : runs) splits.push_back({r.start, r.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (Run r : runs) splits.push_back(r);
      break;
    case SplitBehavior::kContiguous: {
      bool prev = false;
      for (Run r : runs) {
        if (r.is_match == prev && !splits.empty()) splits.back().end = r.end;
        else splits.push_back({r.start, r.end, false});
        prev = r.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev = false;
      for (Run r : runs) {
        if (r.is_match && !prev && !splits.empty()) splits.back().end = r.end;
        else splits.push_back({r.start, r.end, false});
        prev = r.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev = false;
      for (size_t k = runs.size(); k-- > 0;) {
        const Run r = runs[k];
        if (r.is_match && !prev && !splits.empty()) splits.back().start = r.start;
        else splits.push_back({r.start, r.end, false});
        prev = r.is_match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  for (const Run& r : splits) {
    if (r.is_match || r.end == r.start) continue;
    out.push_back({in.text.substr(r.start, r.end - r.start), in.at_origin && r.start == 0});
  }
}

// Runs where each code point satisfying `pred` is its own match (HF's Pattern for Fn(char) -> bool).
std::vector<Run> char_runs(std::string_view s, const std::function<bool(uint32_t)>& pred) {
  std::vector<Run> runs;
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t b = i;
    if (pred(utf8::decode(s, i))) {
      if (last < b) runs.push_back({last, b, false});
      runs.push_back({b, i, true});
      last = i;
    }
  }
  if (last < s.size()) runs.push_back({last, s.size(), false});
  return runs;
}

void invert_runs(std::vector<Run>& runs) {
  for (Run& r : runs) r.is_match = !r.is_match;
}

class SplitRegex final : public PreTokenizer {
 public:
  SplitRegex(std::unique_ptr<Regex> re, SplitBehavior b, bool invert) : re_(std::move(re)), b_(b), invert_(invert) {}
  void split(const Piece& in, std::vector<Piece>& out, PieceStore&) const override {
    const std::string_view s = in.text;
    if (b_ == SplitBehavior::kIsolated && !invert_) {  // the hot path: every run is a piece
      size_t prev = 0, from = 0, ms, me;
      while (from <= s.size() && re_->find(s, from, &ms, &me)) {
        if (prev < ms) out.push_back({s.substr(prev, ms - prev), in.at_origin && prev == 0});
        if (me > ms) out.push_back({s.substr(ms, me - ms), in.at_origin && ms == 0});
        prev = me;
        from = me > ms ? me : (me < s.size() ? me + utf8::seq_len(static_cast<unsigned char>(s[me])) : me + 1);
      }
      if (prev < s.size()) out.push_back({s.substr(prev), in.at_origin && prev == 0});
      return;
    }
    std::vector<Run> runs;
    size_t prev = 0, from = 0, ms, me;
    while (from <= s.size() && re_->find(s, from, &ms, &me)) {
      if (prev != ms) runs.push_back({prev, ms, false});
      runs.push_back({ms, me, true});
      prev = me;
      from = me > ms ? me : (me < s.size() ? me + utf8::seq_len(static_cast<unsigned char>(s[me])) : me + 1);
    }
    if (prev != s.size()) runs.push_back({prev, s.size(), false});
    if (invert_) invert_runs(runs);
    apply_behavior(in, runs, b_, out);
  }

 private:
  std::unique_ptr<Regex> re_;
  SplitBehavior b_;
  bool invert_;
};

class SplitLiteral final : public PreTokenizer {
 public:
  SplitLiteral(std::string lit, SplitBehavior b, bool invert) : lit_(std::move(lit)), b_(b), invert_(invert) {}
  void split(const Piece& in, std::vector<Piece>& out, PieceStore&) const override {
    const std::string_view s = in.text;
    std::vector<Run> runs;
    size_t prev = 0;
    if (!lit_.empty()) {
      for (size_t pos = s.find(lit_); pos != std::string_view::npos; pos = s.find(lit_, pos + lit_.size())) {
        if (prev != pos) runs.push_back({prev, pos, false});
        runs.push_back({pos, pos + lit_.size(), true});
        prev = pos + lit_.size();
      }
    }
    if (prev != s.size()) runs.push_back({prev, s.size(), false});
    if (invert_) invert_runs(runs);
    apply_behavior(in, runs, b_, out);
  }

 private:
  std::string lit_;
  SplitBehavior b_;
  bool invert_;
};

class ByteLevel final : public PreTokenizer {
 public:
  ByteLevel(bool prefix, bool use_regex, bool map_bytes)
      : prefix_(prefix), map_(map_bytes), re_(use_regex ? std::make_unique<SplitRegex>(
                                                             std::make_unique<Regex>(kGpt2Pattern),
                                                             SplitBehavior::kIsolated, false)
                                                       : nullptr) {}
  void split(const Piece& in, std::vector<Piece>& out, PieceStore& store) const override {
    Piece p = in;
    if (prefix_ && (p.text.empty() || p.text[0] != ' ')) {
      store.push_back(" ");
      store.back().append(p.text);
      p.text = store.back();
    }
    const size_t first = out.size();
    if (re_) re_->split(p, out, store);
    else if (!p.text.empty()) out.push_back(p);
    if (map_) {
      for (size_t k = first; k < out.size(); ++k) {
        store.push_back(to_byte_level(out[k].text));
        out[k].text = store.back();
      }
    }
  }

 private:
  bool prefix_, map_;
  std::unique_ptr<SplitRegex> re_;
};

class Metaspace final : public PreTokenizer {
 public:
  Metaspace(std::string rep, std::string scheme, bool split) : rep_(std::move(rep)), scheme_(std::move(scheme)), split_(split) {
    size_t i = 0;
    rep_cp_ = rep_.empty() ? 0 : utf8::decode(rep_, i);
  }
  void split(const Piece& in, std::vector<Piece>& out, PieceStore& store) const override {
    std::string s;
    s.reserve(in.text.size() + rep_.size());
    for (char c : in.text) {
      if (c == ' ') s += rep_;
      else s += c;
    }
    const bool starts = s.compare(0, rep_.size(), rep_) == 0;
    if (!starts && (scheme_ == "always" || (scheme_ == "first" && in.at_origin))) s.insert(0, rep_);
    store.push_back(std::move(s));
    Piece p{store.back(), in.at_origin};
    if (!split_) {
      if (!p.text.empty()) out.push_back(p);
      return;
    }
    const uint32_t r = rep_cp_;
    apply_behavior(p, char_runs(p.text, [r](uint32_t c) { return c == r; }), SplitBehavior::kMergedWithNext, out);
  }

 private:
  std::string rep_, scheme_;
  bool split_;
  uint32_t rep_cp_ = 0;
};

class Digits final : public PreTokenizer {
 public:
  explicit Digits(bool individual) : individual_(individual) {}
  void split(const Piece& in, std::vector<Piece>& out, PieceStore&) const override {
    apply_behavior(in, char_runs(in.text, [](uint32_t c) { return c >= '0' && c <= '9'; }),
                   individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, out);
  }

 private:
  bool individual_;
};

class WhitespaceSplit final : public PreTokenizer {
 public:
  void split(const Piece& in, std::vector<Piece>& out, PieceStore&) const override {
    apply_behavior(in, char_runs(in.text, is_white_space), SplitBehavior::kRemoved, out);
  }
};

class PreSequence final : public PreTokenizer {
 public:
  explicit PreSequence(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void split(const Piece& in, std::vector<Piece>& out, PieceStore& store) const override {
    std::vector<Piece> cur(1, in), next;
    for (const auto& p : parts_) {
      next.clear();
      for (const Piece& q : cur) p->split(q, next, store);
      cur.swap(next);
    }
    out.insert(out.end(), cur.begin(), cur.end());
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_split_regex(std::unique_ptr<Regex> re, SplitBehavior b, bool invert) {
  return std::make_unique<SplitRegex>(std::move(re), b, invert);
}
std::unique_ptr<PreTokenizer> make_split_literal(std::string lit, SplitBehavior b, bool invert) {
  return std::make_unique<SplitLiteral>(std::move(lit), b, invert);
}
std::unique_ptr<PreTokenizer> make_byte_level(bool prefix, bool use_regex, bool map_bytes) {
  return std::make_unique<ByteLevel>(prefix, use_regex, map_bytes);
}
std::unique_ptr<PreTokenizer> make_metaspace(std::string rep, std::string scheme, bool split) {
  return std::make_unique<Metaspace>(std::move(rep), std::move(scheme), split);
}
std::unique_ptr<PreTokenizer> make_digits(bool individual) { return std::make_unique<Digits>(individual); }
std::unique_ptr<PreTokenizer> make_whitespace_split() { return std::make_unique<WhitespaceSplit>(); }
std::unique_ptr<PreTokenizer> make_pre_sequence(std::vector<std::unique_ptr<PreTokenizer>> parts) {
  return std::make_unique<PreSequence>(std::move(parts));
}

}  // namespace qad::tokenizer
