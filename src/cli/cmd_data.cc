// `qad data prepare`: tokenize jsonl / text inputs into a token dataset; `qad data inspect`: print a
// dataset's summary and its first documents' ids and loss masks.
#include <fmt/format.h>

#include <algorithm>

#include "cli/commands.h"
#include "data/dataset.h"
#include "data/document_encoder.h"
#include "data/prepare.h"
#include "tokenizer/doc_end.h"
#include "util/error.h"
#include "util/output_check.h"

namespace qad::cli {
namespace {

struct PrepareArgs {
  std::string tokenizer, output, text_field = "text", messages_field = "messages", on_bad_line = "skip";
  std::string doc_end = "eos", bos = "auto";
  std::vector<std::string> inputs;
  double valid_fraction = 0;
  uint64_t split_seed = 0;
  int threads = 0;
  int64_t shard_tokens = int64_t{1} << 24;
};

struct InspectArgs {
  std::string dir;
  int64_t docs = 3, tokens = 64;
};

void run_prepare(const PrepareArgs& a) {
  data::PrepareOptions o;
  QAD_CHECK(!a.output.empty(), "give the dataset directory to create with --out DIR");
  o.output = a.output;
  o.fields = {a.text_field, a.messages_field};
  QAD_CHECK(a.on_bad_line == "skip" || a.on_bad_line == "error", "--on-bad-line must be skip or error, got '{}'",
            a.on_bad_line);
  o.on_bad_line = a.on_bad_line == "skip" ? data::OnBadLine::skip : data::OnBadLine::error;
  o.valid_fraction = a.valid_fraction;
  o.split_seed = a.split_seed;
  o.threads = a.threads;
  o.shard_tokens = a.shard_tokens;
  check_output_writable(a.output, "--out");
  auto encoder = data::make_tokenizer_encoder(a.tokenizer, data::parse_bos(a.bos, "--bos"));
  o.doc_end = tokenizer::resolve_doc_end(a.doc_end, tokenizer::Tokenizer::load(a.tokenizer));
  std::vector<std::filesystem::path> inputs(a.inputs.begin(), a.inputs.end());
  auto summary = data::prepare_dataset(inputs, *encoder, o);
  fmt::print("wrote {}\n{}", a.output, summary.to_text());
}

std::string join_ids(const data::DocumentView& d, int64_t n) {
  std::string s;
  for (uint64_t i = 0; i < std::min<uint64_t>(d.size, static_cast<uint64_t>(n)); ++i) {
    s += fmt::format("{}{}", i ? " " : "", d.token(i));
  }
  return s + (d.size > static_cast<uint64_t>(n) ? " ..." : "");
}

std::string mask_bits(const data::DocumentView& d, int64_t n) {
  std::string s;
  for (uint64_t i = 0; i < std::min<uint64_t>(d.size, static_cast<uint64_t>(n)); ++i) s += d.mask(i) ? '1' : '0';
  return s + (d.size > static_cast<uint64_t>(n) ? "..." : "");
}

void run_inspect(const InspectArgs& a) {
  data::TokenDataset ds(a.dir);
  const auto& ix = ds.index();
  auto eos = ds.eos_id();
  fmt::print("dataset {} (format {} v{}, {})\n", a.dir, ix.at("format").get<std::string>(), ix.at("version").get<int>(),
             ix.value("created_by", "?"));
  fmt::print("encoder: {} (vocab {}, eos {})\n", ds.fingerprint(), ds.vocab_size(),
             eos ? std::to_string(*eos) : std::string("none"));
  fmt::print("{} documents ({} text, {} chat), {} tokens ({} supervised), {} shard(s)\n", ds.num_documents(),
             ix.value("text_documents", 0), ix.value("chat_documents", 0), ds.num_tokens(),
             ix.value("supervised_tokens", 0), ix.at("shards").size());
  fmt::print("{} lines read, {} blank, {} skipped {}\n", ix.value("lines", 0), ix.value("blank_lines", 0),
             ix.value("skipped_lines", 0), ix.value("skipped", nlohmann::json::object()).dump());
  fmt::print("default validation split: {} of documents (split seed {})\n", ds.valid_fraction(), ds.split_seed());
  for (const auto& in : ix.at("inputs")) {
    fmt::print("  {}: {} lines, {} documents, {} tokens\n", in.at("path").get<std::string>(),
               in.at("lines").get<int64_t>(), in.at("documents").get<int64_t>(), in.at("tokens").get<int64_t>());
  }
  const uint64_t n = std::min<uint64_t>(ds.num_documents(), static_cast<uint64_t>(std::max<int64_t>(a.docs, 0)));
  for (uint64_t i = 0; i < n; ++i) {
    const auto d = ds.document(i);
    fmt::print("\ndoc {} ({}:{}, {}, {} tokens)\n  ids:  {}\n  mask: {}\n", i, ds.input_path(d.source.input_index),
               d.source.line, d.is_chat() ? "chat" : "text", d.size, join_ids(d, a.tokens), mask_bits(d, a.tokens));
  }
}

void register_data(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Prepare and inspect token datasets");
  data->require_subcommand(1);

  auto pa = std::make_shared<PrepareArgs>();
  auto* prep = data->add_subcommand("prepare", "Tokenize .jsonl / .txt inputs (optionally .xz / .zst) into token shards");
  prep->add_option("--tokenizer", pa->tokenizer, "Hugging Face tokenizer directory")->required();
  prep->add_option("--input", pa->inputs, "input files: .jsonl with {\"text\"} or {\"messages\"} lines, or .txt "
                                          "(one document per file); .xz / .zst compressed too")
      ->required()
      ->expected(1, -1);
  add_out_option(prep, pa->output, "dataset directory to create (replaced only if it holds a dataset)");
  prep->add_option("--text-field", pa->text_field, "JSON field holding plain text");
  prep->add_option("--messages-field", pa->messages_field, "JSON field holding chat messages");
  add_on_bad_line_option(prep, pa->on_bad_line, "input lines");
  prep->add_option("--bos", pa->bos, "text documents start with the tokenizer template's special tokens (auto: "
                   "e.g. Llama's BOS; as qad eval scores text) or nothing (never)")->capture_default_str();
  prep->add_option("--doc-end", pa->doc_end, "text documents end with: eos (the tokenizer's), none, a token "
                   "('<|endoftext|>') or an id; match how the model was trained (docs/eval.md)")->capture_default_str();
  prep->add_option("--valid-fraction", pa->valid_fraction,
                   "fraction of documents the loader holds out for validation by default")
      ->check(CLI::Range(0.0, 0.999));
  prep->add_option("--split-seed", pa->split_seed, "seed of the train/validation assignment");
  prep->add_option("--threads", pa->threads, "encoding threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  prep->add_option("--shard-tokens", pa->shard_tokens, "tokens per shard file")->check(CLI::PositiveNumber);
  prep->callback([pa] { run_prepare(*pa); });

  auto ia = std::make_shared<InspectArgs>();
  prep->footer("Examples:\n  qad data prepare --tokenizer ../shared/models/qwen3-16m-teacher --input ../shared/corpus/prose_train.jsonl.xz --out data/prose --valid-fraction 0.02");  // run by tests/usage
  auto* insp = data->add_subcommand("inspect", "Print a dataset's summary and its first documents' ids and masks");
  insp->footer("Examples:\n  qad data inspect data/prose --docs 2");  // run by tests/usage
  insp->add_option("dir", ia->dir, "dataset directory")->required();
  insp->add_option("--docs", ia->docs, "documents to show");
  insp->add_option("--tokens", ia->tokens, "tokens to show per document");
  insp->callback([ia] { run_inspect(*ia); });
}

}  // namespace

QAD_REGISTER_COMMAND(100, register_data);

}  // namespace qad::cli
