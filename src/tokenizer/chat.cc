// Chat rendering (ChatML for Qwen, the Llama 3 header format) and encoding with an assistant-only loss mask.
// The rendering is split at special tokens, which are hard boundaries for HF's pipeline, so encoding the
// parts one by one gives exactly encode(render_chat(...), false).
#include <algorithm>

#include "tokenizer/normalizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

// One piece of the rendering. mask: 0 = prompt, 1 = assistant; 2 = the first `prompt_bytes` are prompt and
// the rest is assistant text (the first assistant tokens start where the encodings of the two differ).
struct Part {
  std::string text;
  int mask = 0;
  size_t prompt_bytes = 0;
};

// Python's str.strip() (Jinja's `trim`): White_Space plus U+001C..U+001F.
std::string py_strip(const std::string& s) {
  auto space = [](uint32_t c) { return is_white_space(c) || (c >= 0x1C && c <= 0x1F); };
  size_t b = 0, e = s.size();
  while (b < e) {
    size_t q = b;
    if (!space(utf8::decode(s, q))) break;
    b = q;
  }
  while (e > b) {
    size_t p = utf8::prev(s, e), q = p;
    if (!space(utf8::decode(s, q))) break;
    e = p;
  }
  return s.substr(b, e - b);
}

void require_token(const Tokenizer& tok, const std::string& t) {
  QAD_CHECK(tok.token_to_id(t).has_value(), "chat template needs the token '{}', which this tokenizer does not have", t);
}

std::vector<Part> render_parts(const Tokenizer& tok, const std::vector<ChatMessage>& messages, bool gen) {
  for (const ChatMessage& m : messages) {
    QAD_CHECK(utf8::valid_prefix(m.content) == m.content.size() && utf8::valid_prefix(m.role) == m.role.size(),
              "chat message with role '{}' is not valid UTF-8", utf8::lossy(m.role));
  }
  std::vector<Part> parts;
  switch (tok.chat_family()) {
    case ChatFamily::kQwen: {
      require_token(tok, "<|im_start|>");
      require_token(tok, "<|im_end|>");
      for (const ChatMessage& m : messages) {
        parts.push_back({"<|im_start|>", 0, 0});
        const std::string head = m.role + "\n";
        const bool asst = m.role == "assistant";
        parts.push_back({head + m.content, asst ? 2 : 0, head.size()});
        parts.push_back({"<|im_end|>", asst ? 1 : 0, 0});
        parts.push_back({"\n", 0, 0});
      }
      if (gen) {
        parts.push_back({"<|im_start|>", 0, 0});
        parts.push_back({"assistant\n", 0, 0});
      }
      return parts;
    }
    case ChatFamily::kLlama3: {
      std::string bos = "<|begin_of_text|>";
      if (auto id = tok.bos_id()) bos = tok.id_to_token(*id).value_or(bos);
      for (const char* t : {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}) require_token(tok, t);
      parts.push_back({bos, 0, 0});
      for (const ChatMessage& m : messages) {
        const bool asst = m.role == "assistant";
        parts.push_back({"<|start_header_id|>", 0, 0});
        parts.push_back({m.role, 0, 0});
        parts.push_back({"<|end_header_id|>", 0, 0});
        parts.push_back({"\n\n" + py_strip(m.content), asst ? 2 : 0, 2});
        parts.push_back({"<|eot_id|>", asst ? 1 : 0, 0});
      }
      if (gen) {
        parts.push_back({"<|start_header_id|>", 0, 0});
        parts.push_back({"assistant", 0, 0});
        parts.push_back({"<|end_header_id|>", 0, 0});
        parts.push_back({"\n\n", 0, 0});
      }
      return parts;
    }
    case ChatFamily::kNone: break;
  }
  qad::fail("this tokenizer has no supported chat template (tokenizer_config.json's chat_template must be ChatML "
            "<|im_start|> or Llama 3 <|start_header_id|>)");
}

}  // namespace

std::string render_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (const Part& p : render_parts(tok, messages, add_generation_prompt)) out += p.text;
  return out;
}

ChatTokens encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  ChatTokens r;
  for (const Part& p : render_parts(tok, messages, add_generation_prompt)) {
    if (p.text.empty()) continue;
    const std::vector<int32_t> ids = tok.encode(p.text, false);
    size_t prompt_tokens = p.mask == 1 ? 0 : ids.size();
    if (p.mask == 2) {
      // Tokens shared with the encoding of the prompt part alone are prompt; a token that straddles the
      // boundary holds assistant bytes and is learned.
      const std::vector<int32_t> head = tok.encode(std::string_view(p.text).substr(0, p.prompt_bytes), false);
      prompt_tokens = static_cast<size_t>(
          std::mismatch(head.begin(), head.end(), ids.begin(), ids.end()).first - head.begin());
    }
    r.ids.insert(r.ids.end(), ids.begin(), ids.end());
    for (size_t k = 0; k < ids.size(); ++k) r.loss_mask.push_back(k < prompt_tokens ? 0 : 1);
  }
  return r;
}

}  // namespace qad::tokenizer
