// `qad eval`: perplexity (and with a teacher KL and top-1 agreement) on text, and generative / multiple-
// choice task accuracy; argument parsing only, the work is eval::run_eval (docs/eval.md).
#include <fmt/format.h>

#include <filesystem>

#include "cli/commands.h"
#include "eval/answer_extraction.h"
#include "eval/eval_command.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/output_check.h"

namespace qad::cli {
namespace {

void register_eval(CLI::App& app) {
  auto o = std::make_shared<eval::EvalCommandOptions>();
  auto json = std::make_shared<bool>(false);
  auto out = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("eval", "Perplexity, KL(teacher||model), top-1 agreement and task accuracy");
  cmd->footer("Examples:\n  qad eval --model runs/qad --teacher ../shared/models/qwen3-16m-teacher --data ../shared/corpus/prose_valid.jsonl.xz --json\n  qad eval --model ../shared/models/qwen3-16m-teacher --tasks ../shared/tasks/arith/test.jsonl --max-items 100");  // each one is run by tests/usage
  cmd->add_option("--model", o->model, "model: an HF checkpoint, NVFP4 export, training checkpoint or run directory; "
                  "LABEL=DIR names it; fq:DIR = dynamic NVFP4 fake quantization of it")->required();
  cmd->add_option("--teacher", o->teacher, "teacher checkpoint: adds KL(teacher||model) and top-1 agreement");
  cmd->add_option("--data", o->data, "perplexity text: .jsonl ({\"text\"}/{\"messages\"}) or .txt, optionally .xz/.zst, "
                  "or a dataset directory from qad data prepare");
  cmd->add_option("--tasks", o->tasks, "task .jsonl: {prompt|question|messages, answer} or {..., choices, label}");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer directory (default: the model's)");
  cmd->add_option("--max-tokens", o->max_tokens, "perplexity: score at most N tokens (0 = all)")->capture_default_str();
  cmd->add_option("--seq-len", o->seq_len, "perplexity window: targets per window")->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "perplexity: windows per forward")->capture_default_str();
  cmd->add_option("--task-batch-size", o->task_batch_size, "tasks: sequences decoded together (0 = as many as free "
                  "memory allows; CPU: 64); multiple choice: sequences per forward (0 = 32)")->capture_default_str();
  cmd->add_option("--samples", o->samples, "tasks: generations per item (k of avg@k; needs --temperature > 0)")
      ->capture_default_str();
  cmd->add_option("--pass-k", o->pass_k, "tasks: the k of pass@k and maj@k, e.g. 1,4,8 (default: 1 and --samples)");
  cmd->add_option("--temperature", o->temperature, "tasks: sampling temperature (0 = greedy)")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "tasks: nucleus sampling mass in (0, 1]")->capture_default_str();
  cmd->add_option("--top-k", o->top_k, "tasks: sample among the k most likely tokens (0 = all)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "tasks: sampling seed (sample j of item i uses the stream (seed, i, j))")
      ->capture_default_str();
  cmd->add_option("--answer-check", o->answer_check, "tasks: exact, numeric (within --abs-tol/--rel-tol), math "
                  "(LaTeX-normalised, docs/eval.md) or choice (A/B/C letters)")->capture_default_str();
  cmd->add_option("--abs-tol", o->abs_tol, "tasks: numeric/math check absolute tolerance")->capture_default_str();
  cmd->add_option("--rel-tol", o->rel_tol, "tasks: numeric/math check relative tolerance")->capture_default_str();
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tasks: generation limit")->capture_default_str();
  cmd->add_option("--max-items", o->max_items, "tasks: only the first N items (0 = all)")->capture_default_str();
  cmd->add_option("--ppl-mode", o->ppl_mode, "perplexity: packed (one stream, windows across documents, as in "
                  "training) or rolling (each raw text document alone in rolling windows, as lm-eval; adds word and "
                  "byte perplexity)")->capture_default_str();
  cmd->add_option("--bos", o->bos, "raw text documents: auto (tokenizer template, e.g. Llama's BOS) or never")
      ->capture_default_str();
  cmd->add_option("--doc-end", o->doc_end, "raw text documents end with: eos, none, a token ('<|endoftext|>') or an id")
      ->capture_default_str();
  cmd->add_option("--answer-rule", o->answer_rule,
                  "generative answer extraction: after-think, last-number, hashes, boxed, full")->capture_default_str();
  cmd->add_option("--mc-norm", o->mc_norm, "multiple choice: compare sum, token (mean) or byte log-likelihoods")
      ->capture_default_str();
  cmd->add_option("--stop-ids", o->stop_ids, "generation stop ids, e.g. 8191 (default: the chat end token)");
  cmd->add_option("--group-field", o->group_field, "per-group accuracy by this task field")->capture_default_str();
  auto on_bad_line = std::make_shared<std::string>();
  add_on_bad_line_option(cmd, *on_bad_line, "task lines");
  cmd->add_option("--predictions", o->predictions, "write one JSON line per task item (generation, prediction)");
  cmd->add_option("--device", o->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "auto (BF16 on CUDA, FP32 on CPU), float32, bfloat16, float16")
      ->capture_default_str();
  cmd->add_flag("--json", *json, "print the metrics as one JSON object on stdout");
  cmd->add_option("--out", *out, "also write that JSON object to FILE, atomically (RUN_DIR/eval.json or "
                  "EXPORT_DIR/eval.json is what qad report reads)");
  cmd->callback([o, json, out, on_bad_line] {
    o->skip_bad_lines = *on_bad_line == "skip";
    if (!out->empty()) {  // before the evaluation, not after an hour of it
      const std::filesystem::path file(*out), parent = file.parent_path().empty() ? "." : file.parent_path();
      std::error_code ec;
      QAD_CHECK(std::filesystem::is_directory(parent, ec), "--out {}: the directory {} does not exist", *out,
                parent.string());
      QAD_CHECK(!std::filesystem::is_directory(file, ec), "--out {} is a directory; give a file name such as {}",
                *out, (file / "eval.json").string());
      check_output_writable(parent, "--out");
    }
    auto m = eval::run_eval(*o);
    if (!out->empty()) write_file_atomic(*out, m.dump(2) + "\n");
    if (*json) {
      fmt::print("{}\n", m.dump());
    } else {
      fmt::print("{}", eval::format_eval_text(m));
    }
  });
}

QAD_REGISTER_COMMAND(600, register_eval);

}  // namespace
}  // namespace qad::cli
