// Input readers: strict UTF-8, JSONL records, and lines of plain, xz and zstd files with their numbers.
#include <random>

#include "data/line_reader.h"
#include "data/record.h"
#include "data/utf8.h"
#include "data_test_util.h"
#include "util/error.h"

namespace qad::data {
namespace {
using qad::testing::ScratchDir;

TEST(Utf8, AcceptsValidAndRejectsEachMalformedClass) {
  const std::string npos_cases[] = {"", "plain ascii", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                    "\xf4\x8f\xbf\xbf" /* U+10FFFF */, "\xed\x9f\xbf" /* U+D7FF */};
  for (const auto& s : npos_cases) EXPECT_EQ(find_invalid_utf8(s), std::string_view::npos) << s;
  struct Bad {
    std::string s;
    size_t at;
  };
  const Bad bad[] = {
      {"ab\xff", 2},                    // never valid
      {"abcdefgh\x80xyz", 8},           // lone continuation after the 8-byte fast path
      {"\xc0\xaf", 0},                  // overlong '/'
      {"\xe0\x80\xaf", 0},              // overlong 3-byte
      {"\xed\xa0\x80", 0},              // surrogate U+D800
      {"\xf4\x90\x80\x80", 0},          // U+110000
      {"x\xe2\x82", 1},                 // truncated at the end
      {"\xc3(", 0},                     // bad continuation
  };
  for (const auto& b : bad) EXPECT_EQ(find_invalid_utf8(b.s), b.at) << ::testing::PrintToString(b.s);
}

TEST(Records, TextChatBlankAndEachBadReason) {
  RecordFields f;
  auto r = parse_jsonl_line(R"({"text": "hello", "source": "x"})", f);
  ASSERT_EQ(r.kind, Record::Kind::text);
  EXPECT_EQ(r.text, "hello");
  r = parse_jsonl_line(R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})", f);
  ASSERT_EQ(r.kind, Record::Kind::chat);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[1].role, "assistant");
  EXPECT_EQ(r.messages[1].content, "yo");
  EXPECT_EQ(parse_jsonl_line("  \t", f).kind, Record::Kind::blank);

  struct Case {
    std::string line;
    BadLineReason reason;
    std::string detail_has;
  };
  const Case cases[] = {
      {R"({"text": "abc)", BadLineReason::invalid_json, "column"},
      {"{\"text\": \"\xff\"}", BadLineReason::invalid_utf8, "column 11"},
      {R"({"body": "abc"})", BadLineReason::missing_field, R"(no "text" or "messages")"},
      {R"({"text": 5})", BadLineReason::wrong_type, "number"},
      {R"([1, 2])", BadLineReason::wrong_type, "array"},
      {R"({"text": ""})", BadLineReason::empty_document, "empty"},
      {R"({"messages": [{"role": "user"}]})", BadLineReason::missing_field, R"(messages[0] has no "content")"},
      {R"({"messages": []})", BadLineReason::empty_document, "empty array"},
  };
  for (const auto& c : cases) {
    auto rec = parse_jsonl_line(c.line, f);
    ASSERT_EQ(rec.kind, Record::Kind::bad) << c.line;
    EXPECT_EQ(rec.reason, c.reason) << c.line << " → " << rec.detail;
    EXPECT_NE(rec.detail.find(c.detail_has), std::string::npos) << rec.detail;
  }
  // A configurable text field.
  RecordFields body{"body", "messages"};
  EXPECT_EQ(parse_jsonl_line(R"({"body": "abc"})", body).kind, Record::Kind::text);
}

TEST(Records, TextFileReportsTheLineOfInvalidUtf8) {
  int64_t line = 0;
  auto r = parse_text_file("first\nsecond\nthi\xffrd\n", line);
  ASSERT_EQ(r.kind, Record::Kind::bad);
  EXPECT_EQ(r.reason, BadLineReason::invalid_utf8);
  EXPECT_EQ(line, 3);
  EXPECT_NE(r.detail.find("column 4"), std::string::npos) << r.detail;
}

std::vector<std::pair<int64_t, std::string>> all_lines(const std::filesystem::path& p) {
  LineReader reader(p);
  std::vector<std::pair<int64_t, std::string>> out;
  std::string_view line;
  while (reader.next(line)) out.emplace_back(reader.line_number(), std::string(line));
  return out;
}

TEST(LineReader, NumbersLinesAcrossPlainXzAndZstd) {
  ScratchDir dir;
  // Long enough to cross the 1 MiB read buffer, with one line longer than the buffer itself, CRLF
  // endings, an empty line and no newline at the very end.
  std::mt19937_64 rng(qad::testing::data_test_seed());
  std::vector<std::string> expect;
  std::string content;
  for (int i = 0; i < 3000; ++i) {
    std::string line = "line " + std::to_string(i) + " " + std::string(rng() % 900, static_cast<char>('a' + i % 26));
    if (i == 1500) line = std::string(1500000, 'L');
    if (i == 7) line.clear();
    expect.push_back(line);
    content += line + (i % 3 == 0 ? "\r\n" : "\n");
  }
  content.pop_back();  // no final newline ("\r" of a CRLF line remains and is stripped)
  if (content.back() == '\r') content.pop_back();
  const auto plain = dir / "lines.jsonl";
  qad::testing::write_bytes(plain, content);
  for (const auto& path : {plain, qad::testing::xz_compress(plain), qad::testing::zstd_compress(plain, 3)}) {
    auto lines = all_lines(path);
    ASSERT_EQ(lines.size(), expect.size()) << path;
    for (size_t i = 0; i < lines.size(); ++i) {
      ASSERT_EQ(lines[i].first, static_cast<int64_t>(i + 1)) << path;
      ASSERT_EQ(lines[i].second, expect[i]) << path << " line " << i + 1;
    }
  }
}

TEST(LineReader, CorruptOrTruncatedCompressedInputIsAnErrorNamingTheFile) {
  ScratchDir dir;
  const auto plain = dir / "data.jsonl";
  std::string content;
  for (int i = 0; i < 20000; ++i) content += "{\"text\": \"document number " + std::to_string(i) + "\"}\n";
  qad::testing::write_bytes(plain, content);
  auto xz = qad::testing::xz_compress(plain);
  auto zst = qad::testing::zstd_compress(plain);
  for (const auto& path : {xz, zst}) {
    std::string bytes = qad::read_file(path);
    qad::testing::write_bytes(path, bytes.substr(0, bytes.size() / 2));
    try {
      all_lines(path);
      ADD_FAILURE() << "no error for truncated " << path;
    } catch (const qad::Error& e) {
      EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    }
  }
  const auto garbage = dir / "garbage.jsonl.xz";
  qad::testing::write_bytes(garbage, "this is not xz data\n");
  EXPECT_THROW(all_lines(garbage), qad::Error);
  EXPECT_THROW(all_lines(dir / "missing.jsonl"), qad::Error);
}

}  // namespace
}  // namespace qad::data
