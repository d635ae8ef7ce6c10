#include "data/record.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "data/utf8.h"
#include "util/message.h"

namespace qad::data {
namespace {

Record bad(BadLineReason reason, std::string detail) {
  Record r;
  r.kind = Record::Kind::bad;
  r.reason = reason;
  r.detail = clip_for_message(detail);  // parser messages quote the input: a 50 MB line stays one short line
  return r;
}

std::string_view type_name(const nlohmann::json& j) { return j.type_name(); }

Record parse_messages(const nlohmann::json& messages, const std::string& field) {
  if (!messages.is_array()) {
    return bad(BadLineReason::wrong_type, fmt::format("\"{}\" is {}, not an array", field, type_name(messages)));
  }
  if (messages.empty()) return bad(BadLineReason::empty_document, fmt::format("\"{}\" is an empty array", field));
  Record r;
  r.kind = Record::Kind::chat;
  r.messages.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object()) {
      return bad(BadLineReason::wrong_type, fmt::format("{}[{}] is {}, not an object", field, i, type_name(m)));
    }
    ChatTurn turn;
    for (const char* key : {"role", "content"}) {
      auto it = m.find(key);
      if (it == m.end()) {
        return bad(BadLineReason::missing_field, fmt::format("{}[{}] has no \"{}\"", field, i, key));
      }
      if (!it->is_string()) {
        return bad(BadLineReason::wrong_type,
                   fmt::format("{}[{}].{} is {}, not a string", field, i, key, type_name(*it)));
      }
      (key[0] == 'r' ? turn.role : turn.content) = it->get<std::string>();
    }
    r.messages.push_back(std::move(turn));
  }
  return r;
}

}  // namespace

std::string_view reason_name(BadLineReason reason) {
  switch (reason) {
    case BadLineReason::invalid_json:
      return "invalid JSON";
    case BadLineReason::invalid_utf8:
      return "invalid UTF-8";
    case BadLineReason::missing_field:
      return "missing field";
    case BadLineReason::wrong_type:
      return "wrong type";
    case BadLineReason::empty_document:
      return "empty document";
  }
  return "?";
}

Record parse_jsonl_line(std::string_view line, const RecordFields& fields) {
  if (std::all_of(line.begin(), line.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r'; })) {
    Record r;
    r.kind = Record::Kind::blank;
    return r;
  }
  if (size_t at = find_invalid_utf8(line); at != std::string_view::npos) {
    return bad(BadLineReason::invalid_utf8,
               fmt::format("byte {:#04x} at column {}", static_cast<uint8_t>(line[at]), at + 1));
  }
  auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Parse again with exceptions for the position and what the parser expected.
    try {
      auto again = nlohmann::json::parse(line);
      (void)again;
    } catch (const nlohmann::json::parse_error& e) {
      // nlohmann says "[json.exception.parse_error.101] parse error at line 1, column 14: <what>".
      std::string what = e.what();
      auto column = what.find("column ");
      auto colon = what.find(": ", column == std::string::npos ? 0 : column);
      return bad(BadLineReason::invalid_json,
                 fmt::format("column {}: {}", e.byte, colon == std::string::npos ? what : what.substr(colon + 2)));
    } catch (const nlohmann::json::exception& e) {  // e.g. out_of_range for a number like 1e309 (found by fuzzing)
      std::string what = e.what();
      const auto bracket = what.find("] ");
      return bad(BadLineReason::invalid_json, bracket == std::string::npos ? what : what.substr(bracket + 2));
    }
    return bad(BadLineReason::invalid_json, "not valid JSON");
  }
  if (!j.is_object()) {
    return bad(BadLineReason::wrong_type, fmt::format("the line is a JSON {}, not an object", type_name(j)));
  }
  if (auto it = j.find(fields.text_field); it != j.end()) {
    if (!it->is_string()) {
      return bad(BadLineReason::wrong_type,
                 fmt::format("\"{}\" is {}, not a string", fields.text_field, type_name(*it)));
    }
    Record r;
    r.kind = Record::Kind::text;
    r.text = it->get<std::string>();
    if (r.text.empty()) return bad(BadLineReason::empty_document, fmt::format("\"{}\" is empty", fields.text_field));
    return r;
  }
  if (auto it = j.find(fields.messages_field); it != j.end()) return parse_messages(*it, fields.messages_field);
  return bad(BadLineReason::missing_field,
             fmt::format("no \"{}\" or \"{}\" field", fields.text_field, fields.messages_field));
}

Record parse_text_file(std::string content, int64_t& line) {
  line = 1;
  if (size_t at = find_invalid_utf8(content); at != std::string::npos) {
    line += std::count(content.begin(), content.begin() + static_cast<std::ptrdiff_t>(at), '\n');
    size_t line_start = content.rfind('\n', at == 0 ? 0 : at - 1);
    size_t column = line_start == std::string::npos || at == 0 ? at + 1 : at - line_start;
    return bad(BadLineReason::invalid_utf8,
               fmt::format("byte {:#04x} at column {}", static_cast<uint8_t>(content[at]), column));
  }
  if (content.empty()) return bad(BadLineReason::empty_document, "the file is empty");
  Record r;
  r.kind = Record::Kind::text;
  r.text = std::move(content);
  return r;
}

}  // namespace qad::data
