// `qad generate`: loads an HF checkpoint and continues one or more prompts (token ids now; text once a
// tokenizer is wired into cli::text_codec()), greedy or sampled, printing ids/text or one JSON object.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "checkpoint/load.h"
#include "cli/commands.h"
#include "cli/text_codec.h"
#include "model/causal_lm.h"
#include "model/context_length.h"
#include "model/device.h"
#include "model/generate.h"
#include "util/error.h"

namespace qad::cli {
namespace {

namespace fs = std::filesystem;

struct GenerateArgs {
  std::string model;
  std::vector<std::string> prompts;
  std::vector<std::string> prompt_ids;
  int64_t max_new_tokens = 64;
  bool greedy = false;
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  std::string stop_ids = "eos";
  std::string device = "auto";
  bool json = false;
  bool chat = false;
};

std::vector<int64_t> parse_ids(const std::string& text, const std::string& option) {
  std::vector<int64_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      QAD_CHECK(used == item.size(), "");
    } catch (...) {
      fail("{}: '{}' is not a comma-separated list of token ids (e.g. 1,403,407)", option, text);
    }
  }
  return ids;
}

int run(const GenerateArgs& a) {
  // Numbers first, before minutes of loading (nan and inf pass the parser).
  QAD_CHECK(std::isfinite(a.temperature) && a.temperature > 0, "--temperature {}: must be a finite number > 0 (use "
            "--greedy for argmax decoding)", a.temperature);
  QAD_CHECK(std::isfinite(a.top_p) && a.top_p > 0 && a.top_p <= 1, "--top-p {}: must be in (0, 1]", a.top_p);
  QAD_CHECK(a.top_k >= 0, "--top-k {}: must be >= 0 (0 = all tokens)", a.top_k);
  QAD_CHECK(!a.chat || a.prompt_ids.empty(), "--chat renders --prompt TEXT as a user message; --prompt-ids are "
            "used as given, so give the chat-formatted ids without --chat");
  const auto device = model::parse_device(a.device);
  auto& codec = text_codec();
  const auto tokenizer_dir = checkpoint::tokenizer_dir(a.model);
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& p : a.prompt_ids) prompts.push_back(parse_ids(p, "--prompt-ids"));
  for (const auto& p : a.prompts) {
    QAD_CHECK(static_cast<bool>(codec.encode),
              "--prompt: text prompts need the tokenizer (not in this build); give token ids with --prompt-ids 1,2,3");
    prompts.push_back(a.chat ? codec.encode_chat(tokenizer_dir, p) : codec.encode(tokenizer_dir, p));
  }
  QAD_CHECK(!prompts.empty(), "give at least one --prompt TEXT or --prompt-ids 1,2,3");

  // Any checkpoint kind: NVFP4 exports (qad quantize, ModelOpt) load dequantized with input fake quant, as the
  // engines compute; a training checkpoint or run directory with its fake-quant hooks (its latest checkpoint).
  auto lm = checkpoint::load_model(a.model, device, model::CausalLM::default_dtype(device));
  model::GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.greedy = a.greedy;
  o.temperature = a.temperature;
  o.top_k = a.top_k;
  o.top_p = a.top_p;
  o.seed = a.seed;
  if (a.stop_ids == "eos") {
    o.stop_ids = lm->config().eos_token_ids;
  } else if (a.stop_ids != "none") {
    o.stop_ids = parse_ids(a.stop_ids, "--stop-ids");
  }
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  model::warn_beyond_context(lm->config(), static_cast<int64_t>(longest) + a.max_new_tokens,
                             "the longest prompt plus --max-new-tokens", a.model);
  auto r = model::generate(lm, prompts, o);
  const bool has_tokenizer = fs::exists(tokenizer_dir / "tokenizer.json");

  nlohmann::json out = {{"model", a.model}, {"device", device.str()}, {"greedy", a.greedy}, {"outputs", nlohmann::json::array()}};
  for (size_t i = 0; i < prompts.size(); ++i) {
    nlohmann::json row = {{"prompt_ids", prompts[i]}, {"new_ids", r.new_ids[i]}, {"stopped", r.stopped[i]}};
    if (codec.decode && has_tokenizer) {  // --prompt-ids needs no tokenizer: ids are printed either way
      auto all = prompts[i];
      all.insert(all.end(), r.new_ids[i].begin(), r.new_ids[i].end());
      row["text"] = codec.decode(tokenizer_dir, all);
    }
    out["outputs"].push_back(row);
  }
  if (a.json) {
    fmt::print("{}\n", out.dump());
    return 0;
  }
  for (const auto& row : out["outputs"]) {
    if (row.contains("text")) fmt::print("{}\n", row["text"].get<std::string>());
    fmt::print("ids: {}{}\n", fmt::join(row["new_ids"].get<std::vector<int64_t>>(), ","),
               row["stopped"].get<bool>() ? "  (stopped)" : "");
  }
  return 0;
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate", "Continue prompts with any checkpoint (KV cache, greedy or sampled)");
  cmd->footer("Examples:\n  qad generate --model ../shared/models/stories260K --prompt-ids 1,403 --max-new-tokens 20 --greedy\n  qad generate --model runs/qad --prompt \"Once upon a time\" --max-new-tokens 40 --greedy");  // each one is run by tests/usage
  cmd->add_option("--model", a->model, "model: an HF checkpoint directory, an NVFP4 export, a training checkpoint or a run directory (its latest "
                  "checkpoint)")->required();
  cmd->add_option("--prompt", a->prompts, "prompt text (repeatable; needs the tokenizer)");
  cmd->add_option("--prompt-ids", a->prompt_ids, "prompt as comma-separated token ids, BOS included (repeatable)");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "tokens to generate per prompt")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--greedy", a->greedy, "argmax decoding instead of sampling");
  cmd->add_option("--temperature", a->temperature, "sampling temperature (> 0)");
  cmd->add_option("--top-k", a->top_k, "sample among the k most likely tokens (0 = all)");
  cmd->add_option("--top-p", a->top_p, "nucleus sampling mass in (0, 1]");
  cmd->add_option("--seed", a->seed, "sampling seed");
  cmd->add_option("--stop-ids", a->stop_ids,
                  "stop tokens: 'eos' (config.json's eos_token_id), 'none', or ids like 1,2 (stories260K ends "
                  "stories with BOS = 1)");
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_flag("--chat", a->chat, "each --prompt is a user message, rendered with the model's chat template and "
                "the assistant's turn opened (as for an instruction-tuned model)");
  cmd->add_flag("--json", a->json, "print one JSON object");
  cmd->callback([a] {
    if (int rc = run(*a); rc != 0) throw CLI::RuntimeError(rc);
  });
}

QAD_REGISTER_COMMAND(500, register_generate);

}  // namespace qad::cli
