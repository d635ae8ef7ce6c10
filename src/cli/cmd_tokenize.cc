// `qad tokenize`: JSON Lines {"text": ...} -> {"ids": [...]} (other fields kept) with a tokenizer.json, for
// checking and debugging tokenization. The work is qad::tokenizer::tokenize_jsonl.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>

#include "cli/commands.h"
#include "tokenizer/tokenize_jsonl.h"
#include "util/error.h"
#include "util/output_check.h"

namespace qad::cli {
namespace {

struct TokenizeOptions {
  std::string tokenizer, input, output;
  bool add_special_tokens = false;
  int threads = 0;
};

void run(const TokenizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  QAD_CHECK(!o.output.empty(), "give the output file with --out FILE");
  check_output_writable(std::filesystem::path(o.output).parent_path(), "--out");
  const auto tok = tokenizer::Tokenizer::load(o.tokenizer);
  const auto stats = tokenizer::tokenize_jsonl(tok, o.input, o.output, o.add_special_tokens, o.threads);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("qad tokenize: {} lines, {} tokens, {:.2f} MB of text in {:.2f} s -> {}\n", stats.lines, stats.tokens,
             stats.bytes / 1e6, s, o.output);
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto opts = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand("tokenize", "Encode {\"text\"} JSON Lines to {\"ids\"} with a tokenizer.json (HF-exact ids)");
  cmd->footer("Examples:\n  qad tokenize --tokenizer ../shared/models/qwen3-16m-teacher --input in.jsonl --out ids.jsonl");  // each one is run by tests/usage
  cmd->add_option("--tokenizer", opts->tokenizer, "folder with tokenizer.json (+ tokenizer_config.json), or the file")
      ->required();
  cmd->add_option("--input", opts->input, "input .jsonl, one {\"text\": ...} object per line")->required();
  add_out_option(cmd, opts->output, "output .jsonl: each line's \"text\" replaced by \"ids\"");
  cmd->add_flag("--add-special-tokens", opts->add_special_tokens, "apply the post-processor (e.g. Llama's BOS)");
  cmd->add_option("--threads", opts->threads, "encoding threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  cmd->callback([opts] { run(*opts); });
}

QAD_REGISTER_COMMAND(800, register_tokenize);

}  // namespace qad::cli
