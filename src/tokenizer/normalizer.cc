// Normalizer implementations, following HF tokenizers' normalizers module.
#include "tokenizer/normalizer.h"

#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"

namespace qad::tokenizer {

bool is_white_space(uint32_t cp) { return unicode::props(cp) & unicode::kWhiteSpace; }

namespace {

class Nfc final : public Normalizer {
 public:
  bool normalize(std::string_view in, std::string& out) const override {
    if (unicode::is_nfc_quick(in)) return false;
    out = unicode::nfc(in);
    return true;
  }
};

class Nfd final : public Normalizer {
 public:
  bool normalize(std::string_view in, std::string& out) const override {
    out = unicode::nfd(in);
    return out != in;
  }
};

// HF Prepend: adds the prefix to non-empty text only.
class Prepend final : public Normalizer {
 public:
  explicit Prepend(std::string p) : p_(std::move(p)) {}
  bool normalize(std::string_view in, std::string& out) const override {
    if (in.empty()) return false;
    out.reserve(p_.size() + in.size());
    out = p_;
    out.append(in);
    return true;
  }

 private:
  std::string p_;
};

class Replace final : public Normalizer {
 public:
  Replace(std::string lit, std::unique_ptr<Regex> re, std::string content)
      : lit_(std::move(lit)), re_(std::move(re)), content_(std::move(content)) {}
  bool normalize(std::string_view in, std::string& out) const override {
    std::string res;
    size_t from = 0;
    bool changed = false;
    while (from <= in.size()) {
      size_t s, e;
      if (re_) {
        if (!re_->find(in, from, &s, &e)) break;
      } else {
        if (lit_.empty()) break;
        s = in.find(lit_, from);
        if (s == std::string_view::npos) break;
        e = s + lit_.size();
      }
      res.append(in.substr(from, s - from));
      res.append(content_);
      changed = true;
      if (e == s) {  // empty match: keep one character and move on
        if (s == in.size()) {
          from = s + 1;
          break;
        }
        const size_t len = utf8::seq_len(static_cast<unsigned char>(in[s]));
        res.append(in.substr(s, len));
        e = s + len;
      }
      from = e;
    }
    if (!changed) return false;
    if (from < in.size()) res.append(in.substr(from));
    out = std::move(res);
    return true;
  }

 private:
  std::string lit_;
  std::unique_ptr<Regex> re_;
  std::string content_;
};

class Strip final : public Normalizer {
 public:
  Strip(bool l, bool r) : l_(l), r_(r) {}
  bool normalize(std::string_view in, std::string& out) const override {
    size_t b = 0, e = in.size();
    if (l_) {
      while (b < e) {
        size_t q = b;
        if (!is_white_space(utf8::decode(in, q))) break;
        b = q;
      }
    }
    if (r_) {
      while (e > b) {
        size_t p = utf8::prev(in, e), q = p;
        if (!is_white_space(utf8::decode(in, q))) break;
        e = p;
      }
    }
    if (b == 0 && e == in.size()) return false;
    out = std::string(in.substr(b, e - b));
    return true;
  }

 private:
  bool l_, r_;
};

class Sequence final : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  bool normalize(std::string_view in, std::string& out) const override {
    bool changed = false;
    std::string cur, next;
    for (const auto& p : parts_) {
      std::string_view src = changed ? std::string_view(cur) : in;
      if (p->normalize(src, next)) {
        cur.swap(next);
        changed = true;
      }
    }
    if (changed) out = std::move(cur);
    return changed;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

std::unique_ptr<Normalizer> make_nfc() { return std::make_unique<Nfc>(); }
std::unique_ptr<Normalizer> make_nfd() { return std::make_unique<Nfd>(); }
std::unique_ptr<Normalizer> make_prepend(std::string p) { return std::make_unique<Prepend>(std::move(p)); }
std::unique_ptr<Normalizer> make_replace(std::string lit, std::unique_ptr<Regex> re, std::string content) {
  return std::make_unique<Replace>(std::move(lit), std::move(re), std::move(content));
}
std::unique_ptr<Normalizer> make_strip(bool l, bool r) { return std::make_unique<Strip>(l, r); }
std::unique_ptr<Normalizer> make_sequence(std::vector<std::unique_ptr<Normalizer>> parts) {
  return std::make_unique<Sequence>(std::move(parts));
}

}  // namespace qad::tokenizer
