// The one thing the data pipeline needs from a tokenizer: documents in, token ids and loss masks out.
// qad_data codes against this interface so that it builds and tests without the real tokenizer.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qad::data {

struct EncodedDocument {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // empty = every token counts; else one 0/1 byte per id
};

struct ChatTurn {
  std::string role, content;
};

// Implementations must be thread-safe for concurrent const calls: prepare_dataset encodes on many threads.
class DocumentEncoder {
 public:
  virtual ~DocumentEncoder() = default;
  virtual EncodedDocument encode_text(std::string_view text) const = 0;                 // all tokens count
  virtual EncodedDocument encode_chat(const std::vector<ChatTurn>& messages) const = 0;  // mask = assistant tokens
  virtual std::optional<int32_t> eos_id() const = 0;  // appended after each text document by prepare
  virtual int64_t vocab_size() const = 0;
  virtual std::string fingerprint() const = 0;  // stored in the dataset index; the loader can check it
};

// The encoder over qad::tokenizer::Tokenizer loaded from a Hugging Face tokenizer directory. Defined in
// tokenizer_encoder*.cc: a stub that throws in builds without the tokenizer library. add_special_tokens: text
// documents get the tokenizer template's special tokens (a Llama tokenizer's BOS; --bos auto, the default
// everywhere, as `qad eval` scores text), or none (--bos never).
std::unique_ptr<DocumentEncoder> make_tokenizer_encoder(const std::filesystem::path& dir, bool add_special_tokens = true);

// --bos / data.bos: "auto" (true) or "never" (false); anything else throws naming `flag`.
bool parse_bos(const std::string& value, const std::string& flag);

}  // namespace qad::data
