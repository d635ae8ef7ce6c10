// A small but real DocumentEncoder for the data tests: one token per byte (id = byte value) plus three
// specials, chats rendered ChatML-style as in ../shared/tasks/arith: "<|im_start|>role\ncontent<|im_end|>\n",
// with the loss on the assistant content and its <|im_end|> only.
#pragma once
#include <atomic>
#include <string>

#include "data/document_encoder.h"
#include "util/error.h"

namespace qad::testing {

class ByteEncoder : public data::DocumentEncoder {
 public:
  static constexpr int32_t kEndOfText = 256, kImStart = 257, kImEnd = 258, kVocab = 259;

  data::EncodedDocument encode_text(std::string_view text) const override {
    count();
    data::EncodedDocument d;
    for (unsigned char c : text) d.ids.push_back(c);
    return d;
  }
  data::EncodedDocument encode_chat(const std::vector<data::ChatTurn>& messages) const override {
    count();
    data::EncodedDocument d;
    auto put = [&](std::string_view s, uint8_t m) {
      for (unsigned char c : s) {
        d.ids.push_back(c);
        d.loss_mask.push_back(m);
      }
    };
    for (const auto& turn : messages) {
      const uint8_t m = turn.role == "assistant" ? 1 : 0;
      d.ids.push_back(kImStart);
      d.loss_mask.push_back(0);
      put(turn.role + "\n", 0);
      put(turn.content, m);
      d.ids.push_back(kImEnd);
      d.loss_mask.push_back(m);
      put("\n", 0);
    }
    return d;
  }
  std::optional<int32_t> eos_id() const override { return kEndOfText; }
  int64_t vocab_size() const override { return kVocab; }
  std::string fingerprint() const override { return "test-bytes-chatml-v1"; }

  // Renders ids back to text, specials by name (to compare with rendered prompts in ../shared).
  static std::string render(const std::vector<int32_t>& ids) {
    std::string s;
    for (int32_t id : ids) {
      if (id < 256) s += static_cast<char>(id);
      else if (id == kEndOfText) s += "<|endoftext|>";
      else if (id == kImStart) s += "<|im_start|>";
      else s += "<|im_end|>";
    }
    return s;
  }

  // Failure injection for the atomic-output test: throws on the n-th encode call (1-based); 0 = never.
  int64_t fail_at_call = 0;

 private:
  void count() const {
    const int64_t n = ++calls_;
    if (fail_at_call > 0 && n == fail_at_call) qad::fail("injected encoder failure at call {}", n);
  }
  mutable std::atomic<int64_t> calls_{0};
};

}  // namespace qad::testing
