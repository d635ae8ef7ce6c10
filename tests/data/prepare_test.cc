// prepare_dataset: counts against ../shared's published figures, chat masks against the rendered prompts
// in tasks/arith/test.jsonl, bad lines with file:line, compressed inputs, thread-count independence and
// an output directory that is complete or absent.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "byte_encoder.h"
#include "data/dataset.h"
#include "data/line_reader.h"
#include "data/prepare.h"
#include "data_test_util.h"

namespace qad::data {
namespace {
namespace fs = std::filesystem;
using qad::testing::ByteEncoder;
using qad::testing::ScratchDir;

PrepareOptions quiet(const fs::path& out) {
  PrepareOptions o;
  o.output = out;
  o.progress = false;
  o.threads = 2;
  o.on_bad_line_report = [](const BadLine&) {};
  return o;
}

std::vector<int32_t> doc_ids(const DocumentView& d) {
  std::vector<int32_t> ids;
  for (uint64_t i = 0; i < d.size; ++i) ids.push_back(static_cast<int32_t>(d.token(i)));
  return ids;
}

TEST(Prepare, CorpusFilesGiveThePublishedDocumentAndByteCounts) {
  // ../shared/corpus/README.md: prose_valid 70 docs / 1,372,538 UTF-8 bytes; python_valid 46 / 551,199.
  // One byte = one token, plus one EOS per document. python_valid line 22 is an empty file
  // (email/mime/__init__.py): skipped as an empty document, so 45 documents remain there.
  ScratchDir dir;
  ByteEncoder enc;
  const auto corpus = qad::testing::shared_data_dir() / "corpus";
  auto opts = quiet(dir / "ds");
  auto s = prepare_dataset({corpus / "prose_valid.jsonl.xz", corpus / "python_valid.jsonl.xz"}, enc, opts);
  EXPECT_EQ(s.documents, 70 + 45);
  EXPECT_EQ(s.inputs[0].documents, 70);
  EXPECT_EQ(s.inputs[0].tokens, 1372538 + 70);
  EXPECT_EQ(s.inputs[1].tokens, 551199 + 45);
  EXPECT_EQ(s.tokens, s.supervised_tokens);
  EXPECT_EQ(s.skipped_lines, 1);
  EXPECT_EQ(s.skipped_by_reason, (std::map<std::string, int64_t>{{"empty document", 1}}));
  EXPECT_EQ(s.lines, 116);

  TokenDataset ds(dir / "ds");
  EXPECT_EQ(ds.num_documents(), 115u);
  EXPECT_EQ(ds.num_tokens(), static_cast<uint64_t>(1372538 + 70 + 551199 + 45));
  EXPECT_EQ(ds.fingerprint(), enc.fingerprint());
  // Document 70 is python_valid's first line: its text (parsed independently) + EOS.
  LineReader reader(corpus / "python_valid.jsonl.xz");
  std::string_view line;
  ASSERT_TRUE(reader.next(line));
  const auto text = nlohmann::json::parse(line).at("text").get<std::string>();
  const auto d = ds.document(70);
  EXPECT_EQ(d.source.input_index, 1u);
  EXPECT_EQ(d.source.line, 1u);
  EXPECT_FALSE(d.is_chat());
  EXPECT_EQ(ByteEncoder::render(doc_ids(d)), text + "<|endoftext|>");
  EXPECT_TRUE(d.mask(0) && d.mask(d.size - 1));
}

TEST(Prepare, ChatMaskCoversExactlyTheAssistantReplyOfArithTestRecords) {
  // tasks/arith/test.jsonl holds `prompt` (the rendered prompt up to "<|im_start|>assistant\n", made by the
  // real chat template) and `reference` (the assistant text). Loss belongs on reference + <|im_end|> only.
  ScratchDir dir;
  ByteEncoder enc;
  std::vector<nlohmann::json> records;
  std::string jsonl;
  LineReader reader(qad::testing::shared_data_dir() / "tasks/arith/test.jsonl");
  std::string_view line;
  while (records.size() < 200 && reader.next(line)) {
    auto r = nlohmann::json::parse(line);
    jsonl += nlohmann::json{{"messages",
                             {{{"role", "user"}, {"content", r.at("question")}},
                              {{"role", "assistant"}, {"content", r.at("reference")}}}}}
                 .dump() +
             "\n";
    records.push_back(std::move(r));
  }
  ASSERT_EQ(records.size(), 200u);
  qad::testing::write_bytes(dir / "chat.jsonl", jsonl);
  auto s = prepare_dataset({dir / "chat.jsonl"}, enc, quiet(dir / "ds"));
  EXPECT_EQ(s.chat_documents, 200);
  TokenDataset ds(dir / "ds");
  int64_t supervised = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto d = ds.document(i);
    ASSERT_TRUE(d.is_chat());
    std::vector<int32_t> masked, unmasked;
    uint64_t first_masked = d.size;
    for (uint64_t t = 0; t < d.size; ++t) {
      (d.mask(t) ? masked : unmasked).push_back(static_cast<int32_t>(d.token(t)));
      if (d.mask(t) && first_masked == d.size) first_masked = t;
      if (d.mask(t)) ++supervised;
    }
    const auto prompt = records[i].at("prompt").get<std::string>();
    const auto reference = records[i].at("reference").get<std::string>();
    EXPECT_EQ(ByteEncoder::render(masked), reference + "<|im_end|>") << "record " << i;
    EXPECT_EQ(ByteEncoder::render(unmasked), prompt + "\n") << "record " << i;  // the "\n" after <|im_end|>
    // One contiguous span, starting right after the rendered prompt.
    const auto ids = doc_ids(d);
    std::vector<int32_t> prefix(ids.begin(), ids.begin() + static_cast<int64_t>(first_masked));
    EXPECT_EQ(ByteEncoder::render(prefix), prompt) << "record " << i;
  }
  EXPECT_EQ(s.supervised_tokens, supervised);
}

TEST(Prepare, BadLinesAreReportedWithFileAndLineAndCountedByReason) {
  ScratchDir dir;
  ByteEncoder enc;
  const std::string lines[] = {
      R"({"text": "good one"})",                              // 1
      R"({"text": "unterminated)",                            // 2 invalid JSON
      "{\"text\": \"bad \xc3\x28 byte\"}",                    // 3 invalid UTF-8
      R"({"title": "no text"})",                              // 4 missing field
      "",                                                      // 5 blank: counted, not reported
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]})",  // 6 missing field
      R"({"text": 42})",                                      // 7 wrong type
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})",  // 8
  };
  std::string content;
  for (const auto& l : lines) content += l + "\n";
  const auto input = dir / "mixed.jsonl";
  qad::testing::write_bytes(input, content);

  std::vector<BadLine> reported;
  auto opts = quiet(dir / "ds");
  opts.on_bad_line_report = [&](const BadLine& b) { reported.push_back(b); };
  auto s = prepare_dataset({input}, enc, opts);
  const std::vector<std::pair<int64_t, BadLineReason>> expect = {{2, BadLineReason::invalid_json},
                                                                 {3, BadLineReason::invalid_utf8},
                                                                 {4, BadLineReason::missing_field},
                                                                 {6, BadLineReason::missing_field},
                                                                 {7, BadLineReason::wrong_type}};
  ASSERT_EQ(reported.size(), expect.size());
  for (size_t i = 0; i < expect.size(); ++i) {
    EXPECT_EQ(reported[i].file, input.string());
    EXPECT_EQ(reported[i].line, expect[i].first);
    EXPECT_EQ(reported[i].reason, expect[i].second) << reported[i].message();
    EXPECT_EQ(reported[i].message().rfind(fmt::format("{}:{}: ", input.string(), expect[i].first), 0), 0u);
  }
  EXPECT_EQ(s.documents, 2);
  EXPECT_EQ(s.lines, 8);
  EXPECT_EQ(s.blank_lines, 1);
  EXPECT_EQ(s.skipped_lines, 5);
  EXPECT_EQ(s.skipped_by_reason, (std::map<std::string, int64_t>{
                                     {"invalid JSON", 1}, {"invalid UTF-8", 1}, {"missing field", 2}, {"wrong type", 1}}));
  // The same list is kept in the dataset, one JSON object per line.
  LineReader skipped(dir / "ds" / "skipped.jsonl");
  std::string_view l;
  for (const auto& [line, reason] : expect) {
    ASSERT_TRUE(skipped.next(l));
    auto j = nlohmann::json::parse(l);
    EXPECT_EQ(j.at("line").get<int64_t>(), line);
    EXPECT_EQ(j.at("reason").get<std::string>(), reason_name(reason));
  }
  EXPECT_FALSE(skipped.next(l));
  EXPECT_EQ(TokenDataset(dir / "ds").index().at("skipped").at("missing field").get<int>(), 2);

  // --on-bad-line error: stops at the first bad line, names it, and writes nothing.
  opts.output = dir / "strict";
  opts.on_bad_line = OnBadLine::error;
  try {
    prepare_dataset({input}, enc, opts);
    ADD_FAILURE() << "no error";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("{}:2: invalid JSON", input.string())), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "strict"));
}

TEST(Prepare, PlainTextFilesAreOneDocumentEach) {
  ScratchDir dir;
  ByteEncoder enc;
  qad::testing::write_bytes(dir / "a.txt", "first paragraph\n\nsecond paragraph\n");
  qad::testing::write_bytes(dir / "b.txt", "line one\nline \xff two\n");
  std::vector<BadLine> reported;
  auto opts = quiet(dir / "ds");
  opts.on_bad_line_report = [&](const BadLine& b) { reported.push_back(b); };
  auto s = prepare_dataset({dir / "a.txt", dir / "b.txt"}, enc, opts);
  EXPECT_EQ(s.documents, 1);
  EXPECT_EQ(s.tokens, 34 + 1);
  EXPECT_EQ(s.inputs[0].lines, 3);
  ASSERT_EQ(reported.size(), 1u);
  EXPECT_EQ(reported[0].line, 2);
  EXPECT_EQ(reported[0].reason, BadLineReason::invalid_utf8);
}

TEST(Prepare, XzZstdAndPlainInputsGiveIdenticalShardsForAnyThreadCount) {
  ScratchDir dir;
  ByteEncoder enc;
  std::string content;
  for (int i = 0; i < 3000; ++i) {
    if (i % 5 == 0) {
      content += nlohmann::json{{"messages", {{{"role", "user"}, {"content", fmt::format("q{}", i)}},
                                              {{"role", "assistant"}, {"content", std::string(i % 37, 'a')}}}}}
                     .dump() +
                 "\n";
    } else {
      content += nlohmann::json{{"text", fmt::format("doc {}{}", i, std::string(i % 53, 'x'))}}.dump() + "\n";
    }
  }
  const auto plain = dir / "in.jsonl";
  qad::testing::write_bytes(plain, content);
  const auto xz = qad::testing::xz_compress(plain);
  const auto zst = qad::testing::zstd_compress(plain, 2);
  auto run = [&](const fs::path& in, int threads, const std::string& name) {
    auto opts = quiet(dir / name);
    opts.threads = threads;
    opts.lines_per_chunk = 7;      // many chunks, so that threads interleave
    opts.shard_tokens = 20000;     // several shards
    auto s = prepare_dataset({in}, enc, opts);
    EXPECT_EQ(s.documents, 3000);
    EXPECT_EQ(s.chat_documents, 600);
    EXPECT_GT(s.shards, 2);
    return s.shards;
  };
  const int64_t shards = run(plain, 1, "plain1");
  run(plain, 3, "plain3");
  run(xz, 2, "xz");
  run(zst, 3, "zst");
  for (const char* other : {"plain3", "xz", "zst"}) {
    for (int64_t i = 0; i < shards; ++i) {
      const std::string name = fmt::format("shard-{:05}.bin", i);
      EXPECT_EQ(qad::read_file(dir / "plain1" / name), qad::read_file(dir / other / name)) << other << "/" << name;
    }
  }
}

TEST(Prepare, AFailureLeavesNoOutputAndKeepsAnOlderDataset) {
  ScratchDir dir;
  std::string content;
  for (int i = 0; i < 500; ++i) content += fmt::format("{{\"text\": \"document {}\"}}\n", i);
  qad::testing::write_bytes(dir / "in.jsonl", content);
  ByteEncoder failing;
  failing.fail_at_call = 400;  // after several shards were written to the temporary directory
  auto opts = quiet(dir / "out" / "ds");
  opts.shard_tokens = 500;
  EXPECT_THROW(prepare_dataset({dir / "in.jsonl"}, failing, opts), qad::Error);
  EXPECT_FALSE(fs::exists(dir / "out" / "ds"));
  for (const auto& e : fs::directory_iterator(dir / "out")) ADD_FAILURE() << "left behind: " << e.path();

  // An existing dataset survives a failed re-prepare untouched.
  ByteEncoder good;
  prepare_dataset({dir / "in.jsonl"}, good, opts);
  const std::string index_before = qad::read_file(dir / "out" / "ds" / "index.json");
  ByteEncoder failing2;
  failing2.fail_at_call = 10;
  EXPECT_THROW(prepare_dataset({dir / "in.jsonl"}, failing2, opts), qad::Error);
  EXPECT_EQ(qad::read_file(dir / "out" / "ds" / "index.json"), index_before);
  EXPECT_EQ(TokenDataset(dir / "out" / "ds").num_documents(), 500u);

  // A directory that is not a dataset is never replaced.
  fs::create_directories(dir / "precious");
  qad::testing::write_bytes(dir / "precious" / "notes.txt", "keep me");
  opts.output = dir / "precious";
  EXPECT_THROW(prepare_dataset({dir / "in.jsonl"}, good, opts), qad::Error);
  EXPECT_EQ(qad::read_file(dir / "precious" / "notes.txt"), "keep me");
}

}  // namespace
}  // namespace qad::data
