// Pipeline: one reader thread cuts inputs into chunks of lines, worker threads parse and encode chunks,
// and the calling thread writes results strictly in input order, so the output does not depend on the
// number of threads. At most a few chunks per thread are in flight, which bounds memory.
#include "data/prepare.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <fstream>
#include <mutex>
#include <thread>

#include "data/dataset.h"
#include "data/line_reader.h"
#include "data/shard_format.h"
#include "qad/version.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"

namespace qad::data {
namespace fs = std::filesystem;

std::string BadLine::message() const {
  return fmt::format("{}:{}: {}: {}", file, line, reason_name(reason), detail);
}

nlohmann::json InputStats::to_json() const {
  return {{"path", path},     {"lines", lines},   {"blank_lines", blank_lines},
          {"documents", documents}, {"tokens", tokens}, {"supervised_tokens", supervised_tokens},
          {"skipped", skipped}};
}

std::string PrepareSummary::to_text() const {
  std::string s = fmt::format("{} documents ({} text, {} chat), {} tokens ({} supervised), {} shard(s), {:.1f} s\n",
                              documents, text_documents, chat_documents, tokens, supervised_tokens, shards, seconds);
  s += fmt::format("{} lines read, {} blank, {} skipped", lines, blank_lines, skipped_lines);
  if (!skipped_by_reason.empty()) {
    std::string parts;
    for (const auto& [reason, n] : skipped_by_reason) parts += fmt::format("{}{}: {}", parts.empty() ? "" : ", ", reason, n);
    s += " (" + parts + ")";
  }
  s += "\n";
  for (const auto& in : inputs) {
    int64_t skipped = 0;
    for (const auto& [reason, n] : in.skipped) skipped += n;
    s += fmt::format("  {}: {} lines, {} documents, {} tokens, {} skipped\n", in.path, in.lines, in.documents,
                     in.tokens, skipped);
  }
  return s;
}

namespace {

enum class InputKind { jsonl, text };

InputKind input_kind(const fs::path& path) {
  const auto ext = strip_compression_suffix(path).extension().string();
  if (ext == ".jsonl" || ext == ".ndjson") return InputKind::jsonl;
  if (ext == ".txt" || ext == ".text" || ext == ".md") return InputKind::text;
  fail("cannot tell the format of input {}: name it .jsonl (one JSON object per line) or .txt (one document per "
       "file), optionally followed by .xz or .zst",
       path.string());
}

struct Chunk {
  uint32_t input = 0;
  bool text_file = false;
  int64_t text_file_lines = 0;
  std::vector<int64_t> line_numbers;
  std::vector<std::string> lines;
  uint64_t consumed_after = 0;  // input bytes consumed when this chunk was cut (for progress)
};

struct Item {
  int64_t line = 0;
  Record::Kind kind = Record::Kind::bad;
  EncodedDocument doc;
  BadLineReason reason{};
  std::string detail;
};

struct ChunkResult {
  std::vector<Item> items;
  std::exception_ptr error;
};

Item encode_record(Record rec, int64_t line, const DocumentEncoder& encoder, const std::string& file,
                   const std::optional<std::optional<int32_t>>& doc_end) {
  Item item;
  item.line = line;
  item.kind = rec.kind;
  if (rec.kind == Record::Kind::bad) {
    item.reason = rec.reason;
    item.detail = std::move(rec.detail);
    return item;
  }
  if (rec.kind == Record::Kind::blank) return item;
  if (rec.kind == Record::Kind::text) {
    item.doc = encoder.encode_text(rec.text);
    if (item.doc.ids.empty()) {
      item.kind = Record::Kind::bad;
      item.reason = BadLineReason::empty_document;
      item.detail = "the text encodes to no tokens";
      return item;
    }
    if (auto end = doc_end ? *doc_end : encoder.eos_id()) {
      item.doc.ids.push_back(*end);
      if (!item.doc.loss_mask.empty()) item.doc.loss_mask.push_back(1);
    }
  } else {
    item.doc = encoder.encode_chat(rec.messages);
    if (item.doc.ids.empty()) {
      item.kind = Record::Kind::bad;
      item.reason = BadLineReason::empty_document;
      item.detail = "the chat encodes to no tokens";
      return item;
    }
  }
  // An encoder bug, not a data problem: stop rather than write ids the model cannot embed.
  const auto& d = item.doc;
  QAD_CHECK(d.loss_mask.empty() || d.loss_mask.size() == d.ids.size(),
            "{}:{}: the encoder returned {} loss-mask entries for {} tokens", file, line, d.loss_mask.size(),
            d.ids.size());
  const int64_t vocab = encoder.vocab_size();
  for (int32_t id : d.ids) {
    QAD_CHECK(id >= 0 && id < vocab, "{}:{}: the encoder returned token id {} outside [0, {})", file, line, id, vocab);
  }
  return item;
}

ChunkResult process_chunk(Chunk& chunk, const DocumentEncoder& encoder, const PrepareOptions& options,
                          const std::string& file) {
  ChunkResult out;
  try {
    out.items.reserve(chunk.lines.size());
    for (size_t i = 0; i < chunk.lines.size(); ++i) {
      int64_t line = chunk.line_numbers[i];
      Record rec = chunk.text_file ? parse_text_file(std::move(chunk.lines[i]), line)
                                   : parse_jsonl_line(chunk.lines[i], options.fields);
      out.items.push_back(encode_record(std::move(rec), line, encoder, file, options.doc_end));
    }
  } catch (...) {
    out.error = std::current_exception();
  }
  return out;
}

// The reader → workers → writer hand-over, guarded by one mutex.
class Pipeline {
 public:
  Pipeline(size_t max_in_flight) : max_in_flight_(max_in_flight) {}

  // Reader side. Returns false when the pipeline is stopping.
  bool push(Chunk chunk) {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return stop_ || produced_ - written_ < static_cast<int64_t>(max_in_flight_); });
    if (stop_) return false;
    todo_.emplace_back(produced_++, std::move(chunk));
    cv_.notify_all();
    return true;
  }
  void reader_done(std::exception_ptr error) {
    std::lock_guard lock(m_);
    reader_done_ = true;
    reader_error_ = error;
    cv_.notify_all();
  }

  // Worker side: waits for a chunk; false when there will be no more.
  bool pop(int64_t& seq, Chunk& chunk) {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return stop_ || !todo_.empty() || reader_done_; });
    if (stop_ || todo_.empty()) return false;
    seq = todo_.front().first;
    chunk = std::move(todo_.front().second);
    todo_.pop_front();
    return true;
  }
  void finished(int64_t seq, Chunk chunk, ChunkResult result) {
    std::lock_guard lock(m_);
    done_.emplace(seq, std::make_pair(std::move(chunk), std::move(result)));
    cv_.notify_all();
  }

  // Writer side: the next chunk in order; false at the end. Rethrows the reader's error in order.
  bool next(Chunk& chunk, ChunkResult& result) {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return done_.count(written_) != 0 || (reader_done_ && written_ == produced_); });
    auto it = done_.find(written_);
    if (it == done_.end()) {
      if (reader_error_) std::rethrow_exception(reader_error_);
      return false;
    }
    chunk = std::move(it->second.first);
    result = std::move(it->second.second);
    done_.erase(it);
    ++written_;
    cv_.notify_all();
    return true;
  }

  void stop() {
    std::lock_guard lock(m_);
    stop_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  size_t max_in_flight_;
  std::deque<std::pair<int64_t, Chunk>> todo_;
  std::map<int64_t, std::pair<Chunk, ChunkResult>> done_;
  int64_t produced_ = 0, written_ = 0;
  bool reader_done_ = false, stop_ = false;
  std::exception_ptr reader_error_;
};

void read_inputs(const std::vector<fs::path>& inputs, const std::vector<InputKind>& kinds,
                 const PrepareOptions& options, Pipeline& pipe) {
  constexpr size_t kChunkBytes = 4 << 20;
  uint64_t consumed_before = 0;
  for (uint32_t i = 0; i < inputs.size(); ++i) {
    const uint64_t file_bytes = fs::file_size(inputs[i]);
    Chunk chunk;
    chunk.input = i;
    if (kinds[i] == InputKind::text) {
      chunk.text_file = true;
      chunk.lines.push_back(read_all(inputs[i]));
      const auto& text = chunk.lines.back();
      chunk.text_file_lines = std::count(text.begin(), text.end(), '\n') + (!text.empty() && text.back() != '\n');
      chunk.line_numbers.push_back(1);
      consumed_before += file_bytes;
      chunk.consumed_after = consumed_before;
      if (!pipe.push(std::move(chunk))) return;
      continue;
    }
    LineReader reader(inputs[i]);
    std::string_view line;
    size_t bytes = 0;
    auto flush = [&]() {
      chunk.consumed_after = consumed_before + reader.consumed_bytes();
      bool ok = pipe.push(std::move(chunk));
      chunk = Chunk();
      chunk.input = i;
      bytes = 0;
      return ok;
    };
    while (reader.next(line)) {
      chunk.lines.emplace_back(line);
      chunk.line_numbers.push_back(reader.line_number());
      bytes += line.size();
      if (static_cast<int64_t>(chunk.lines.size()) >= options.lines_per_chunk || bytes >= kChunkBytes) {
        if (!flush()) return;
      }
    }
    if (!chunk.lines.empty() && !flush()) return;
    consumed_before += file_bytes;
  }
}

std::string shard_name(int64_t i) { return fmt::format("shard-{:05}.bin", i); }

void check_output(const fs::path& out) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return;
  QAD_CHECK(fs::is_directory(out, ec), "--out {} exists and is a file; choose a directory name", out.string());
  const bool empty = fs::directory_iterator(out, ec) == fs::directory_iterator();
  QAD_CHECK(empty || looks_like_dataset(out),
            "--out {} exists and is not a qad token dataset; it is only replaced when it holds one. Choose "
            "another directory or remove it",
            out.string());
}

}  // namespace

PrepareSummary prepare_dataset(const std::vector<fs::path>& inputs, const DocumentEncoder& encoder,
                               const PrepareOptions& options) {
  QAD_CHECK(!inputs.empty(), "no input files given");
  QAD_CHECK(!options.output.empty(), "no output directory given");
  QAD_CHECK(options.shard_tokens > 0 && options.lines_per_chunk > 0, "shard_tokens and lines_per_chunk must be > 0");
  QAD_CHECK(options.valid_fraction >= 0 && options.valid_fraction < 1, "--valid-fraction must be in [0, 1), got {}",
            options.valid_fraction);
  QAD_CHECK(encoder.vocab_size() > 0 && encoder.vocab_size() <= (int64_t{1} << 32),
            "the encoder reports vocab_size {}, outside (0, 2^32]", encoder.vocab_size());
  std::vector<InputKind> kinds;
  uint64_t total_bytes = 0;
  for (const auto& in : inputs) {
    std::error_code ec;
    QAD_CHECK(fs::is_regular_file(in, ec), "input {} does not exist or is not a file", in.string());
    kinds.push_back(input_kind(in));
    total_bytes += fs::file_size(in);
  }
  check_output(options.output);

  const int threads = options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  PrepareSummary summary;
  summary.inputs.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) summary.inputs[i].path = inputs[i].string();
  std::vector<BadLine> bad_lines;
  auto report = options.on_bad_line_report;
  if (!report) {
    report = [&, logged = int64_t{0}](const BadLine& b) mutable {
      if (logged++ < options.log_bad_lines) fmt::print(stderr, "qad: skipped {}\n", b.message());
    };
  }

  Progress progress("prepare", options.progress ? static_cast<int64_t>(total_bytes >> 10) : 0, "kB");

  write_directory_atomic(options.output, [&](const fs::path& tmp) {
    Pipeline pipe(static_cast<size_t>(threads) * 4);
    std::thread reader([&] {
      std::exception_ptr error;
      try {
        read_inputs(inputs, kinds, options, pipe);
      } catch (...) {
        error = std::current_exception();
      }
      pipe.reader_done(error);
    });
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&] {
        int64_t seq;
        Chunk chunk;
        while (pipe.pop(seq, chunk)) {
          auto result = process_chunk(chunk, encoder, options, summary.inputs[chunk.input].path);
          pipe.finished(seq, std::move(chunk), std::move(result));
        }
      });
    }
    auto join_all = [&] {
      pipe.stop();
      reader.join();
      for (auto& w : workers) w.join();
    };

    nlohmann::json shards = nlohmann::json::array();
    ShardWriter writer;
    auto flush_shard = [&] {
      if (writer.num_documents() == 0) return;
      const std::string name = shard_name(static_cast<int64_t>(shards.size()));
      shards.push_back({{"file", name},
                        {"documents", writer.num_documents()},
                        {"tokens", writer.num_tokens()},
                        {"supervised_tokens", writer.supervised_tokens()}});
      writer.write(tmp / name);
    };

    try {
      Chunk chunk;
      ChunkResult result;
      while (pipe.next(chunk, result)) {
        if (result.error) std::rethrow_exception(result.error);
        InputStats& stats = summary.inputs[chunk.input];
        stats.lines += chunk.text_file ? chunk.text_file_lines : static_cast<int64_t>(result.items.size());
        for (auto& item : result.items) {
          switch (item.kind) {
            case Record::Kind::blank:
              ++stats.blank_lines;
              break;
            case Record::Kind::bad: {
              BadLine b{stats.path, item.line, item.reason, std::move(item.detail)};
              // An empty document is valid input (an empty __init__.py in the corpus): skipped and
              // listed, but never fatal.
              QAD_CHECK(options.on_bad_line == OnBadLine::skip || b.reason == BadLineReason::empty_document,
                        "{}; fix or remove the line, or pass --on-bad-line skip to skip bad lines", b.message());
              ++stats.skipped[std::string(reason_name(b.reason))];
              report(b);
              bad_lines.push_back(std::move(b));
              break;
            }
            case Record::Kind::text:
            case Record::Kind::chat: {
              const bool chat = item.kind == Record::Kind::chat;
              const uint64_t before = writer.supervised_tokens();
              writer.add(item.doc.ids, item.doc.loss_mask,
                         DocumentSource{chunk.input, chat ? kDocumentIsChat : 0u, static_cast<uint64_t>(item.line)});
              ++stats.documents;
              ++(chat ? summary.chat_documents : summary.text_documents);
              stats.tokens += static_cast<int64_t>(item.doc.ids.size());
              stats.supervised_tokens += static_cast<int64_t>(writer.supervised_tokens() - before);
              if (static_cast<int64_t>(writer.num_tokens()) >= options.shard_tokens) flush_shard();
              break;
            }
          }
        }
        summary.documents = summary.text_documents + summary.chat_documents;
        summary.skipped_lines = static_cast<int64_t>(bad_lines.size());
        if (options.progress) {
          progress.set(static_cast<int64_t>(chunk.consumed_after >> 10),
                       fmt::format("{} docs, {} skipped", summary.documents, summary.skipped_lines));
        }
      }
      flush_shard();
    } catch (...) {
      join_all();
      throw;
    }
    join_all();

    for (const auto& in : summary.inputs) {
      summary.lines += in.lines;
      summary.blank_lines += in.blank_lines;
      summary.tokens += in.tokens;
      summary.supervised_tokens += in.supervised_tokens;
      for (const auto& [reason, n] : in.skipped) summary.skipped_by_reason[reason] += n;
    }
    summary.shards = static_cast<int64_t>(shards.size());
    // A dataset without documents is no dataset: every later step would fail on it, less clearly.
    if (summary.documents == 0) {
      std::string reasons;
      for (const auto& [reason, n] : summary.skipped_by_reason) reasons += fmt::format(", {} {}", n, reason);
      fail("{}: no documents: {} line(s) read, {} blank, {} skipped{}; nothing was written. Check the input (JSON "
           "Lines with a \"{}\" or \"{}\" field, or .txt)", inputs.size() == 1 ? inputs[0].string() : "the inputs",
           summary.lines, summary.blank_lines, summary.skipped_lines, reasons, options.fields.text_field,
           options.fields.messages_field);
    }

    std::string skipped_text;
    for (const auto& b : bad_lines) {
      skipped_text += nlohmann::json{{"file", b.file}, {"line", b.line}, {"reason", reason_name(b.reason)},
                                     {"detail", b.detail}}
                          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
                      "\n";
    }
    write_file_atomic(tmp / "skipped.jsonl", skipped_text);

    nlohmann::json inputs_json = nlohmann::json::array();
    for (const auto& in : summary.inputs) inputs_json.push_back(in.to_json());
    auto eos = encoder.eos_id();
    const auto doc_end = options.doc_end ? *options.doc_end : eos;
    nlohmann::json index = {
        {"format", kDatasetFormat},
        {"version", kDatasetVersion},
        {"created_by", std::string("qad ") + QAD_VERSION},
        {"encoder",
         {{"fingerprint", encoder.fingerprint()},
          {"vocab_size", encoder.vocab_size()},
          {"eos_id", eos ? nlohmann::json(*eos) : nlohmann::json(nullptr)}}},
        {"doc_end", doc_end ? nlohmann::json(*doc_end) : nlohmann::json(nullptr)},  // after each text document
        {"documents", summary.documents},
        {"text_documents", summary.text_documents},
        {"chat_documents", summary.chat_documents},
        {"tokens", summary.tokens},
        {"supervised_tokens", summary.supervised_tokens},
        {"lines", summary.lines},
        {"blank_lines", summary.blank_lines},
        {"skipped_lines", summary.skipped_lines},
        {"skipped", summary.skipped_by_reason},
        {"skipped_file", "skipped.jsonl"},
        {"valid_fraction", options.valid_fraction},
        {"split_seed", options.split_seed},
        {"fields", {{"text", options.fields.text_field}, {"messages", options.fields.messages_field}}},
        {"shards", shards},
        {"inputs", inputs_json},
    };
    // The index is written last: a directory with an index is a complete one.
    write_file_atomic(tmp / kIndexFile, index.dump(2) + "\n");
  });
  summary.seconds = progress.elapsed_seconds();
  if (options.progress) {
    progress.finish(fmt::format("{} docs, {} tokens, {} skipped", summary.documents, summary.tokens,
                                summary.skipped_lines));
  }
  if (!options.on_bad_line_report && summary.skipped_lines > options.log_bad_lines) {
    fmt::print(stderr, "qad: {} more bad lines not shown; all {} are listed in {}\n",
               summary.skipped_lines - options.log_bad_lines, summary.skipped_lines,
               (options.output / "skipped.jsonl").string());
  }
  return summary;
}

}  // namespace qad::data
