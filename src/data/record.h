// One input line (or text file) turned into a document to encode, or into a reason why it is skipped.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/document_encoder.h"

namespace qad::data {

enum class BadLineReason { invalid_json, invalid_utf8, missing_field, wrong_type, empty_document };
inline constexpr int kNumBadLineReasons = 5;

// Stable names used in summaries, skipped.jsonl and messages: "invalid JSON", "invalid UTF-8", ...
std::string_view reason_name(BadLineReason reason);

struct RecordFields {
  std::string text_field = "text";          // {"text": "..."} → a plain-text document
  std::string messages_field = "messages";  // {"messages": [{"role", "content"}...]} → a chat document
};

struct Record {
  enum class Kind { text, chat, blank, bad } kind = Kind::bad;
  std::string text;                // Kind::text
  std::vector<ChatTurn> messages;  // Kind::chat
  BadLineReason reason{};          // Kind::bad
  std::string detail;              // Kind::bad: what exactly, e.g. `messages[1] has no "content"`
};

// Parses one JSON Lines line. Whitespace-only lines are Kind::blank (counted, not reported). An object with
// the text field (a string) is a text document; else one with the messages field is a chat document.
Record parse_jsonl_line(std::string_view line, const RecordFields& fields);

// A whole plain-text file as one document; invalid UTF-8 is reported at its line (`line` is set to it).
Record parse_text_file(std::string content, int64_t& line);

}  // namespace qad::data
