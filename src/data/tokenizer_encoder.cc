// make_tokenizer_encoder: the DocumentEncoder over the Hugging Face tokenizer (qad::tokenizer). Text
// documents are encoded without special tokens (EOS is appended by prepare); chat documents through the
// tokenizer's chat family, with the assistant-only loss mask.
#include <fstream>
#include <sstream>

#include "data/document_encoder.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::data {
namespace {

// FNV-1a over tokenizer.json: two datasets prepared with different tokenizers never mix.
std::string fingerprint_of(const std::filesystem::path& dir_or_file) {
  auto file = std::filesystem::is_directory(dir_or_file) ? dir_or_file / "tokenizer.json" : dir_or_file;
  const std::string bytes = read_file(file);
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return fmt::format("tokenizer.json:fnv1a64:{:016x}", h);
}

class TokenizerEncoder final : public DocumentEncoder {
 public:
  TokenizerEncoder(const std::filesystem::path& dir, bool add_special_tokens)
      : tok_(tokenizer::Tokenizer::load(dir)), fingerprint_(fingerprint_of(dir)), add_special_(add_special_tokens) {}

  EncodedDocument encode_text(std::string_view text) const override {
    return {tok_.encode(text, add_special_), {}};
  }

  EncodedDocument encode_chat(const std::vector<ChatTurn>& messages) const override {
    std::vector<tokenizer::ChatMessage> m;
    m.reserve(messages.size());
    for (const auto& t : messages) m.push_back({t.role, t.content});
    auto chat = tokenizer::encode_chat(tok_, m);
    return {std::move(chat.ids), std::move(chat.loss_mask)};
  }

  std::optional<int32_t> eos_id() const override { return tok_.eos_id(); }
  int64_t vocab_size() const override { return tok_.vocab_size(); }
  std::string fingerprint() const override { return fingerprint_; }

 private:
  tokenizer::Tokenizer tok_;
  std::string fingerprint_;
  bool add_special_;
};

}  // namespace

std::unique_ptr<DocumentEncoder> make_tokenizer_encoder(const std::filesystem::path& dir, bool add_special_tokens) {
  return std::make_unique<TokenizerEncoder>(dir, add_special_tokens);
}

bool parse_bos(const std::string& value, const std::string& flag) {
  QAD_CHECK(value == "auto" || value == "never", "{} {}: choose auto (the tokenizer template's special tokens, e.g. "
            "Llama's BOS, before each text document) or never", flag, value);
  return value == "auto";
}

}  // namespace qad::data
