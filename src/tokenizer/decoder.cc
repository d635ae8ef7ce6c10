// Decoder implementations, following HF tokenizers' decoders module (byte-level text is made valid UTF-8
// with Rust's from_utf8_lossy policy).
#include "tokenizer/decoder.h"

#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"

namespace qad::tokenizer {
namespace {

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < t.size();) {
        const int b = char_to_byte(utf8::decode(t, i));
        if (b < 0) {
          ok = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!ok) {  // a token outside the byte-level alphabet contributes its own UTF-8 bytes
        bytes.resize(mark);
        bytes.append(t);
      }
    }
    tokens.assign(1, utf8::lossy(bytes));
  }
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::string p, std::string c) : p_(std::move(p)), c_(std::move(c)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (p_.empty()) return;
    for (std::string& t : tokens) {
      std::string r;
      size_t from = 0;
      for (size_t pos = t.find(p_); pos != std::string::npos; pos = t.find(p_, from)) {
        r.append(t, from, pos - from);
        r += c_;
        from = pos + p_.size();
      }
      r.append(t, from, std::string::npos);
      t.swap(r);
    }
  }

 private:
  std::string p_, c_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8::valid_prefix(pending) == pending.size()) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        auto hex = [](char h) {
          return (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        };
        const int hi = hex(t[3]), lo = hex(t[4]);
        if (hi >= 0 && lo >= 0) byte = hi * 16 + lo;
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing occurrences of one character from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string c, size_t start, size_t stop) : c_(std::move(c)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (c_.empty()) return;
    for (std::string& t : tokens) {
      size_t b = 0, e = t.size();
      for (size_t k = 0; k < start_ && t.compare(b, c_.size(), c_) == 0 && b + c_.size() <= e; ++k) b += c_.size();
      for (size_t k = 0; k < stop_ && e >= b + c_.size() && t.compare(e - c_.size(), c_.size(), c_) == 0; ++k)
        e -= c_.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  std::string c_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string rep, bool strip_first) : rep_(std::move(rep)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string r;
      const std::string& t = tokens[i];
      for (size_t k = 0; k < t.size();) {
        if (!rep_.empty() && t.compare(k, rep_.size(), rep_) == 0) {
          r += ' ';
          k += rep_.size();
        } else {
          r += t[k++];
        }
      }
      if (i == 0 && strip_first_ && !r.empty() && r[0] == ' ') r.erase(0, 1);
      tokens[i] = std::move(r);
    }
  }

 private:
  std::string rep_;
  bool strip_first_;
};

class DecoderSequence final : public Decoder {
 public:
  explicit DecoderSequence(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<Decoder> make_byte_level_decoder() { return std::make_unique<ByteLevelDecoder>(); }
std::unique_ptr<Decoder> make_replace_decoder(std::string p, std::string c) {
  return std::make_unique<ReplaceDecoder>(std::move(p), std::move(c));
}
std::unique_ptr<Decoder> make_byte_fallback_decoder() { return std::make_unique<ByteFallbackDecoder>(); }
std::unique_ptr<Decoder> make_fuse_decoder() { return std::make_unique<FuseDecoder>(); }
std::unique_ptr<Decoder> make_strip_decoder(std::string c, size_t start, size_t stop) {
  return std::make_unique<StripDecoder>(std::move(c), start, stop);
}
std::unique_ptr<Decoder> make_metaspace_decoder(std::string rep, bool strip_first) {
  return std::make_unique<MetaspaceDecoder>(std::move(rep), strip_first);
}
std::unique_ptr<Decoder> make_decoder_sequence(std::vector<std::unique_ptr<Decoder>> parts) {
  return std::make_unique<DecoderSequence>(std::move(parts));
}

}  // namespace qad::tokenizer
