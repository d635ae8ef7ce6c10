// Reading the evaluation text into a token stream, and cutting windows (docs/eval.md "Perplexity").
#include "eval/token_stream.h"

#include <fmt/format.h>

#include <algorithm>

#include "data/byte_source.h"
#include "data/dataset.h"
#include "data/line_reader.h"
#include "data/record.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace qad::eval {
namespace {

namespace fs = std::filesystem;

// 1 + the number of maximal ASCII-whitespace runs: the length of Python's re.split(r"\s+", text) for
// ASCII text (lm-eval's word count for word_perplexity).
int64_t count_words(std::string_view text) {
  int64_t n = 1;
  bool in_space = false;
  for (char c : text) {
    const bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
    if (space && !in_space) ++n;
    in_space = space;
  }
  return n;
}

bool full(const TokenStream& s, const StreamOptions& o) {
  return o.max_tokens > 0 && static_cast<int64_t>(s.ids.size()) >= o.max_tokens + 1;
}

void append(TokenStream& s, const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
            const StreamOptions& o) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (full(s, o)) {
      s.truncated = true;
      return;
    }
    s.ids.push_back(ids[i]);
    s.mask.push_back(mask.empty() ? 1 : mask[i]);
  }
}

void add_record(TokenStream& s, const data::Record& r, const tokenizer::Tokenizer& tok, const StreamOptions& o) {
  DocumentSpan span;
  span.begin = static_cast<int64_t>(s.ids.size());
  if (r.kind == data::Record::Kind::text) {
    auto ids = tok.encode(r.text, o.bos == BosMode::kAuto);
    span.tokens = static_cast<int64_t>(ids.size());
    span.has_text = true;
    span.bytes = static_cast<int64_t>(r.text.size());
    span.words = count_words(r.text);
    if (o.doc_end) ids.push_back(*o.doc_end);
    append(s, ids, {}, o);
    ++s.text_documents;
  } else {
    std::vector<tokenizer::ChatMessage> m;
    for (const auto& t : r.messages) m.push_back({t.role, t.content});
    auto chat = tokenizer::encode_chat(tok, m);
    span.tokens = static_cast<int64_t>(chat.ids.size());
    span.chat = true;
    append(s, chat.ids, chat.loss_mask, o);
    ++s.chat_documents;
  }
  span.tokens = std::min(span.tokens, static_cast<int64_t>(s.ids.size()) - span.begin);  // truncated
  s.spans.push_back(span);
  ++s.documents;
}

void read_raw_file(TokenStream& s, const fs::path& path, const tokenizer::Tokenizer& tok, const StreamOptions& o) {
  QAD_CHECK(fs::is_regular_file(path), "--data {}: no such file (give .jsonl / .txt files, optionally .xz/.zst, or a "
            "dataset directory from qad data prepare)", path.string());
  const auto ext = data::strip_compression_suffix(path).extension().string();
  if (ext == ".txt" || ext == ".text" || ext == ".md") {
    int64_t line = 1;
    auto r = data::parse_text_file(data::read_all(path), line);
    if (r.kind == data::Record::Kind::bad) {
      s.skipped.push_back(fmt::format("{}:{}: {}: {}", path.string(), line, data::reason_name(r.reason), r.detail));
      return;
    }
    add_record(s, r, tok, o);
    return;
  }
  QAD_CHECK(ext == ".jsonl" || ext == ".ndjson", "--data {}: cannot tell the format; name it .jsonl ({{\"text\"}} or "
            "{{\"messages\"}} per line) or .txt (one document per file)", path.string());
  data::RecordFields fields{o.text_field, o.messages_field};
  data::LineReader reader(path);
  std::string_view line;
  while (!full(s, o) && reader.next(line)) {
    auto r = data::parse_jsonl_line(line, fields);
    if (r.kind == data::Record::Kind::blank) continue;
    if (r.kind == data::Record::Kind::bad) {
      s.skipped.push_back(
          fmt::format("{}:{}: {}: {}", path.string(), reader.line_number(), data::reason_name(r.reason), r.detail));
      continue;
    }
    add_record(s, r, tok, o);
  }
}

void read_dataset(TokenStream& s, const fs::path& dir, const StreamOptions& o) {
  data::TokenDataset ds(dir);
  for (uint64_t d = 0; d < ds.num_documents() && !full(s, o); ++d) {
    auto doc = ds.document(d);
    std::vector<int32_t> ids(doc.size);
    std::vector<uint8_t> mask(doc.size);
    for (uint64_t i = 0; i < doc.size; ++i) {
      ids[i] = static_cast<int32_t>(doc.token(i));
      mask[i] = doc.mask(i) ? 1 : 0;
    }
    DocumentSpan span;
    span.begin = static_cast<int64_t>(s.ids.size());
    span.chat = doc.is_chat();
    append(s, ids, mask, o);
    span.tokens = static_cast<int64_t>(s.ids.size()) - span.begin;
    s.spans.push_back(span);
    ++s.documents;
    ++(doc.is_chat() ? s.chat_documents : s.text_documents);
  }
}

}  // namespace

TokenStream read_token_stream(const std::vector<fs::path>& paths, const tokenizer::Tokenizer* tok,
                              const StreamOptions& options) {
  QAD_CHECK(!paths.empty(), "no --data given");
  TokenStream s;
  for (const auto& p : paths) {
    if (full(s, options)) {
      s.truncated = true;
      break;
    }
    if (fs::is_directory(p)) {
      QAD_CHECK(data::looks_like_dataset(p), "--data {} is a directory without index.json: give a dataset made by "
                "qad data prepare, or .jsonl/.txt files", p.string());
      read_dataset(s, p, options);
    } else {
      QAD_CHECK(tok != nullptr, "--data {}: raw text needs a tokenizer (tokenizer.json in the model directory, or "
                "--tokenizer DIR)", p.string());
      read_raw_file(s, p, *tok, options);
    }
  }
  QAD_CHECK(s.ids.size() >= 2, "--data: fewer than 2 tokens in {} ({} documents, {} lines skipped); perplexity needs "
            "at least one target", paths.front().string(), s.documents, s.skipped.size());
  return s;
}

std::vector<Window> make_windows(int64_t n, int64_t seq_len) {
  QAD_CHECK(seq_len >= 1, "--seq-len must be >= 1, got {}", seq_len);
  std::vector<Window> w;
  for (int64_t b = 0; b + 1 < n; b += seq_len) w.push_back({b, std::min(seq_len + 1, n - b)});
  return w;
}


}  // namespace qad::eval
