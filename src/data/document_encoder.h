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
// tokenizer_encoder*.cc: a stub that throws in builds without the tokenizer library.
std::unique_ptr<DocumentEncoder> make_tokenizer_encoder(const std::filesystem::path& dir);

}  // namespace qad::data
