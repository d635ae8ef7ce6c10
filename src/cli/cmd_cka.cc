// `qad cka`: per-layer CKA of models against a teacher (biased/debiased x full/minibatch) as a table, CSV
// or JSON, and an SVG plot with one line per model; argument parsing only, the work is eval::run_cka.
#include <iostream>

#include "cli/commands.h"
#include "eval/eval_command.h"

namespace qad::cli {
namespace {

void register_cka(CLI::App& app) {
  auto o = std::make_shared<eval::CkaCommandOptions>();
  auto json = std::make_shared<bool>(false);
  auto csv = std::make_shared<bool>(false);
  auto plot = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("cka", "Per-layer CKA of models' hidden states against a teacher's");
  cmd->footer("Examples:\n  qad cka --teacher ../shared/models/qwen3-16m-teacher --model PTQ=runs/ptq/export/nvfp4 --model QAD=runs/qad --data ../shared/corpus/prose_valid.jsonl.xz --plot cka.svg");  // each one is run by tests/usage
  cmd->add_option("--teacher", o->teacher, "reference checkpoint (HF directory, or any kind --model takes)")->required();
  cmd->add_option("--model", o->models, "model to compare (repeatable): DIR (an HF checkpoint, NVFP4 export, training "
                  "checkpoint or run directory), LABEL=DIR, fq:DIR (dynamic NVFP4 fake quantization)")->required();
  cmd->add_option("--data", o->data, "text (.jsonl/.txt, optionally .xz/.zst) or a prepared dataset directory")
      ->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer directory (default: the teacher's)");
  cmd->add_option("--tokens", o->tokens, "data tokens to use (0 = all)")->capture_default_str();
  cmd->add_option("--seq-len", o->seq_len, "tokens per window")->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "windows per batch (= one minibatch)")->capture_default_str();
  cmd->add_flag("--include-norm", o->include_norm, "also compare the final norm's output");
  cmd->add_flag("--json", *json, "JSON instead of a table");
  cmd->add_flag("--csv", *csv, "CSV instead of a table");
  cmd->add_option("--plot", *plot, "write the per-layer plot as SVG");
  cmd->add_option("--plot-variant", o->plot_variant, "biased, debiased, minibatch-biased, minibatch-debiased")
      ->capture_default_str();
  cmd->add_option("--bos", o->bos, "raw text: auto or never")->capture_default_str();
  cmd->add_option("--doc-end", o->doc_end, "raw text documents end with: eos, none, a token or an id")->capture_default_str();
  cmd->add_option("--device", o->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "auto, float32, bfloat16, float16")->capture_default_str();
  cmd->callback([o, json, csv, plot] {
    if (*json && *csv) throw CLI::ValidationError("--json and --csv exclude each other");
    o->format = *json ? "json" : *csv ? "csv" : "table";
    if (!plot->empty()) o->plot = *plot;
    eval::run_cka(*o, std::cout);
  });
}

QAD_REGISTER_COMMAND(650, register_cka);

}  // namespace
}  // namespace qad::cli
