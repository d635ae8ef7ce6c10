// qad::tokenizer::Tokenizer: HF `tokenizers`-exact encoding and decoding from tokenizer.json (+ optional
// tokenizer_config.json), without Python. Byte-level BPE (GPT-2, Llama 3, Qwen2/3) and SentencePiece-style
// BPE with byte fallback (Llama 2). Supported components and traps: docs/tokenizer.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qad::tokenizer {

enum class ChatFamily { kNone, kQwen /*ChatML*/, kLlama3 };

class Tokenizer {
 public:
  // dir with tokenizer.json (+ optional tokenizer_config.json), or a tokenizer.json path; throws qad::Error
  // naming the file.
  static Tokenizer load(const std::filesystem::path& dir_or_file);

  // Text that is not valid UTF-8 is first repaired (each maximal invalid subsequence -> U+FFFD).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // threads = 0: one per hardware thread (at most one per text).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts, bool add_special_tokens = true,
                                                 int threads = 0) const;
  // Unknown ids are skipped, as HF does.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int64_t vocab_size() const;  // including added tokens (distinct token strings, as HF get_vocab_size(true))
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  std::optional<int32_t> bos_id() const;  // from tokenizer_config.json, else config.json next to it
  std::optional<int32_t> eos_id() const;
  std::optional<int32_t> pad_id() const;
  ChatFamily chat_family() const;  // from tokenizer_config.json's chat_template
  bool is_special(int32_t id) const;  // an added token marked special

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // immutable after load: copies share it, const methods are thread-safe
};

struct ChatMessage {
  std::string role, content;
};
struct ChatTokens {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // 1 = assistant token (incl. its end-of-turn token)
};

// Renders with the tokenizer's chat family (docs/tokenizer.md) and encodes with add_special_tokens=false;
// ids == encode(render_chat(...), false). Throws qad::Error for a tokenizer without a chat family.
ChatTokens encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages, bool add_generation_prompt = false);
std::string render_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages, bool add_generation_prompt = false);

}  // namespace qad::tokenizer
