// The evaluation text as one token stream with a per-token "scored" mask, cut into fixed windows for
// perplexity, KL and CKA. Reads a prepared token dataset (qad data prepare) or raw .jsonl/.txt files
// (optionally .xz/.zst) encoded with the model's tokenizer. BOS / document-end rules: docs/eval.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/doc_end.h"

namespace qad::tokenizer {
class Tokenizer;
}

namespace qad::eval {

// Where one document lies in the stream (for per-document scoring, rolling_perplexity.h).
struct DocumentSpan {
  int64_t begin = 0;   // first token (a leading BOS included)
  int64_t tokens = 0;  // the document's tokens, without the document-end token appended after it
  bool chat = false;
  bool has_text = false;  // raw text: words and bytes below are known
  int64_t words = 0;      // whitespace-separated pieces of the text (lm-eval's re.split(r"\s+") count)
  int64_t bytes = 0;      // UTF-8 bytes of the text
};

struct TokenStream {
  std::vector<DocumentSpan> spans;  // one per document (the last one may be truncated by max_tokens)
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;  // 1 = this token is scored when it is a target (chat: assistant tokens only)
  int64_t documents = 0;
  int64_t text_documents = 0, chat_documents = 0;
  std::vector<std::string> skipped;  // "file:line: reason" of skipped input lines
  bool truncated = false;            // stopped at max_tokens
};

enum class BosMode { kAuto, kNever };

struct StreamOptions {
  // Raw text documents: kAuto encodes with the tokenizer's template (add_special_tokens=true: Llama puts
  // BOS first, Qwen adds nothing); kNever encodes the bare text.
  BosMode bos = BosMode::kAuto;
  // Raw text documents: the token appended after each (the tokenizer's EOS by default); nullopt = none.
  std::optional<int32_t> doc_end;
  int64_t max_tokens = 0;  // > 0: stop once the stream holds max_tokens + 1 tokens (max_tokens targets)
  std::string text_field = "text", messages_field = "messages";
};

// `path`: a dataset directory (index.json) -> its documents in order, tokens and masks as stored (the
// options' bos / doc_end do not apply); else one or more raw files encoded with `tok` (required then).
// Bad lines are skipped and listed (as qad data prepare does); no document at all is an error.
TokenStream read_token_stream(const std::vector<std::filesystem::path>& paths, const tokenizer::Tokenizer* tok,
                              const StreamOptions& options);

// A window of the stream: tokens [begin, begin + length). Inputs are its first length-1 tokens, targets
// its last length-1. Windows overlap by one token, so every stream token after the first is a target of
// exactly one window; the last window may be shorter (length >= 2).
struct Window {
  int64_t begin = 0, length = 0;
};
std::vector<Window> make_windows(int64_t stream_tokens, int64_t seq_len);

// Resolves "eos" (the tokenizer's EOS), "none", a token string ("<|endoftext|>") or an id ("2").
using tokenizer::resolve_doc_end;  // tokenizer/doc_end.h

}  // namespace qad::eval
