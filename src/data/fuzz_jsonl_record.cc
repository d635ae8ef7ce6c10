// Fuzz target for JSON Lines records: every line of the input is classified (text, chat, blank or bad with a
// reason) without throwing; a text document is non-empty valid UTF-8, and a bad line's detail stays short
// however long the line (messages quote the input). Built as a libFuzzer target (-DQAD_FUZZ=ON, clang) and as
// a bounded seeded run in ctest (tests/fuzz).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "data/record.h"
#include "data/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view all(reinterpret_cast<const char*>(data), size);
  const qad::data::RecordFields fields;
  while (!all.empty()) {
    const size_t nl = all.find('\n');
    const std::string_view line = all.substr(0, nl);
    all = nl == std::string_view::npos ? std::string_view() : all.substr(nl + 1);
    const auto r = qad::data::parse_jsonl_line(line, fields);
    using Kind = qad::data::Record::Kind;
    if (r.kind == Kind::text && (r.text.empty() || qad::data::find_invalid_utf8(r.text) != std::string_view::npos)) {
      std::abort();
    }
    if (r.kind == Kind::chat && r.messages.empty()) std::abort();
    if (r.kind == Kind::bad && r.detail.size() > 260) std::abort();
  }
  return 0;
}
