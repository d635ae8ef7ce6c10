// `qad distill`: QAD, CKA-QAD, QAT or PTQ of a teacher into an NVFP4 student (docs/train.md). The
// configuration is the method's defaults, then --config recipe.yaml, then the flags below, then --set.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "dist/launch_env.h"
#include "dist/local_launcher.h"
#include "train/config.h"
#include "train/distributed.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/signals.h"

namespace qad::cli {
namespace {

struct DistillArgs {
  std::string recipe, method;
  std::vector<std::string> sets;
  std::vector<std::pair<std::string, std::string>> values;  // (config key, value) of flags given
  bool resume = false, print_only = false;
  int nproc_per_node = 0;  // > 0: start that many local ranks (docs/dist.md)
  double dist_timeout = 600, bucket_mb = 25;
  int zero = 1;
  std::string kill_rank;
};

// --flag VALUE → key=VALUE, for the options a user changes most; everything else through --set.
const std::vector<std::array<const char*, 3>> kValueFlags = {
    {"--teacher", "run.teacher", "teacher: an HF model directory (BF16 or FP32)"},
    {"--data", "data.path", "training data: a prepared dataset dir, or .jsonl/.txt (.xz/.zst) prepared with the teacher's tokenizer"},
    {"--valid-data", "data.valid_path", "held-out data (same forms); default: data.valid_fraction of --data"},
    {"--out", "run.out", "run directory (metrics.jsonl, run.json, checkpoints/, export/)"},
    {"--student", "quant.student", "start from this NVFP4 checkpoint instead of PTQ-calibrating the teacher"},
    {"--steps", "run.steps", "optimizer steps"},
    {"--lr", "optim.lr", "peak learning rate"},
    {"--schedule", "optim.schedule", "cosine | linear | constant"},
    {"--warmup", "optim.warmup_fraction", "warmup as a fraction of the steps"},
    {"--weight-decay", "optim.weight_decay", "AdamW weight decay"},
    {"--grad-clip", "optim.grad_clip", "max global gradient norm (0 = off)"},
    {"--grad-accum", "optim.grad_accum", "micro-batches per optimizer step"},
    {"--batch-size", "data.batch_size", "rows per micro-batch"},
    {"--seq-len", "data.seq_len", "tokens per row"},
    {"--kl", "loss.kl", "weight of KL(teacher || student)"},
    {"--ce", "loss.ce", "weight of the cross-entropy on the data's labels"},
    {"--cka", "loss.cka", "lambda of the CKA term (mean over layers of 1 - CKA)"},
    {"--temperature", "loss.temperature", "KL temperature"},
    {"--top-k", "loss.top_k", "top-k KL (0 = full vocabulary)"},
    {"--cka-estimator", "loss.cka_estimator", "biased | debiased"},
    {"--cka-subsample", "loss.cka_subsample_tokens", "tokens per micro-batch in the CKA term (0 = all)"},
    {"--cka-layers", "loss.cka_layers", "comma-separated hidden-state names (default: every layers.N)"},
    {"--calib-batches", "quant.calib_batches", "PTQ calibration batches"},
    {"--seed", "run.seed", "seed of the step randomness (CKA subsampling)"},
    {"--data-seed", "data.seed", "shuffle seed"},
    {"--device", "run.device", "auto | cpu | cuda | cuda:N"},
    {"--valid-every", "run.valid_every", "validate every N steps (0 = start and end only)"},
    {"--valid-batches", "run.valid_batches", "batches per validation"},
    {"--checkpoint-every", "run.checkpoint_every", "checkpoint every N steps (0 = final only)"},
    {"--max-bad-steps", "run.max_bad_steps", "stop after N consecutive non-finite steps"},
    {"--log-every", "run.log_every", "progress line every N steps"},
    {"--name", "run.name", "run name in reports"},
};
const std::vector<std::array<const char*, 3>> kBoolFlags = {
    {"--activation-checkpointing", "run.activation_checkpointing", "recompute each layer in backward"},
    {"--export-bf16", "run.export_bf16", "also export the student in BF16 (export/bf16)"},
    {"--cka-dynamic-balance", "loss.cka_dynamic_balance", "scale the CKA term to the KL's magnitude"},
};

// One argument as a POSIX shell reads it back (for the resume command line printed after a stop).
std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") ==
                        std::string::npos) {
    return s;
  }
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

train::TrainConfig assemble(const DistillArgs& a) {
  nlohmann::json recipe = nlohmann::json::object();
  if (!a.recipe.empty()) recipe = train::load_recipe(a.recipe);
  std::string method = "qad";
  if (recipe.contains("method")) method = recipe["method"].get<std::string>();
  if (!a.method.empty()) method = a.method;
  auto cfg = train::defaults_for(train::parse_method(method));
  if (!a.recipe.empty()) cfg.merge_json(recipe, a.recipe);
  nlohmann::json patch = nlohmann::json::object();
  for (const auto& [k, v] : a.values) train::merge_into(patch, train::parse_override(k + "=" + v));
  for (const auto& s : a.sets) train::merge_into(patch, train::parse_override(s));
  patch["method"] = method;
  cfg.merge_json(patch, "command line");
  if (cfg.method == train::Method::kPtq && cfg.run.steps != 0) {
    fmt::print("ptq: calibration only; --steps {} is ignored\n", cfg.run.steps);
    cfg.run.steps = 0;
  }
  return cfg;
}

void register_distill(CLI::App& app) {
  auto a = std::make_shared<DistillArgs>();
  auto* cmd = app.add_subcommand("distill", "Quantization-aware distillation of a teacher into an NVFP4 student "
                                            "(QAD, CKA-QAD, QAT, PTQ)");
  cmd->add_option("--config", a->recipe, "recipe YAML (recipes/qad.yaml, recipes/cka_qad.yaml, recipes/qat.yaml)");
  cmd->add_option("--method", a->method, "ptq | qat | qad | cka-qad | pretrain (default: the recipe's, else qad)");
  auto values = std::make_shared<std::vector<std::pair<CLI::Option*, std::string>>>();
  auto storage = std::make_shared<std::vector<std::string>>(kValueFlags.size());
  for (size_t i = 0; i < kValueFlags.size(); ++i) {
    values->emplace_back(cmd->add_option(kValueFlags[i][0], (*storage)[i], kValueFlags[i][2]), kValueFlags[i][1]);
  }
  auto bools = std::make_shared<std::vector<std::pair<CLI::Option*, std::string>>>();
  for (const auto& f : kBoolFlags) bools->emplace_back(cmd->add_flag(f[0], f[2]), f[1]);
  cmd->add_option("--set", a->sets, "any setting as section.key=value (e.g. --set loss.kl_top_k=1024); repeatable");
  cmd->add_flag("--resume", a->resume, "continue the run in --out from its latest checkpoint (same configuration)");
  cmd->add_flag("--print-config", a->print_only, "print the effective configuration and exit");
  auto nan_steps = std::make_shared<std::string>();
  auto kill_step = std::make_shared<std::string>();
  cmd->add_option("--debug-nan-at-steps", *nan_steps)->group("");  // test hooks, hidden from --help
  cmd->add_option("--debug-kill-at-step", *kill_step)->group("");
  cmd->add_option("--debug-kill-rank", a->kill_rank)->group("");
  auto signal_steps = std::make_shared<std::string>();
  cmd->add_option("--debug-signal-at-steps", *signal_steps)->group("");
  cmd->add_option("--nproc-per-node", a->nproc_per_node, "start N data-parallel ranks on this machine (one per GPU; "
                  "Gloo on CPU); without it the ranks come from RANK/WORLD_SIZE/... or SLURM (docs/dist.md)");
  cmd->add_option("--dist-timeout", a->dist_timeout, "seconds a rank waits for the others (rendezvous, collectives) "
                  "before the run fails")->capture_default_str();
  cmd->add_option("--zero", a->zero, "1: shard FP32 master weights and AdamW moments over the ranks (ZeRO-1); 0: "
                  "every rank holds them")->capture_default_str();
  cmd->add_option("--bucket-mb", a->bucket_mb, "gradient all-reduce bucket size in MB")->capture_default_str();
  cmd->callback([=] {
    for (size_t i = 0; i < values->size(); ++i) {
      if ((*values)[i].first->count()) a->values.emplace_back((*values)[i].second, (*storage)[i]);
    }
    for (const auto& [opt, key] : *bools) {
      if (opt->count()) a->values.emplace_back(key, "true");
    }
    if (!nan_steps->empty()) a->values.emplace_back("debug.nan_at_steps", "[" + *nan_steps + "]");
    if (!kill_step->empty()) a->values.emplace_back("debug.kill_at_step", *kill_step);
    if (!a->kill_rank.empty()) a->values.emplace_back("debug.kill_rank", a->kill_rank);
    if (!signal_steps->empty()) a->values.emplace_back("debug.signal_at_steps", "[" + *signal_steps + "]");
    auto cfg = assemble(*a);
    if (a->print_only) {
      fmt::print("{}", train::describe(cfg));
      return;
    }
    QAD_CHECK(std::isfinite(a->dist_timeout) && a->dist_timeout > 0, "--dist-timeout {}: must be a positive number of "
              "seconds", a->dist_timeout);
    QAD_CHECK(std::isfinite(a->bucket_mb) && a->bucket_mb > 0, "--bucket-mb {}: must be a positive number",
              a->bucket_mb);
    cfg.validate();  // before anything runs, and before the launcher starts ranks that would each refuse it
    const auto env = dist::parse_launch_env(dist::process_env());
    if (a->nproc_per_node > 0 && env.source == "none") {
      // The launcher: the same command line for every rank, without --nproc-per-node.
      dist::LocalLaunch l;
      l.nproc = a->nproc_per_node;
      const auto& argv = launch_argv();
      for (size_t i = 1; i < argv.size(); ++i) {
        const std::string& s = argv[i];
        if (s == "--nproc-per-node") {
          ++i;
          continue;
        }
        if (s.rfind("--nproc-per-node=", 0) == 0) continue;
        l.args.push_back(s);
      }
      dist::launch_local(l);
      return;
    }
    cfg.dist.rank = env.rank;
    cfg.dist.world_size = env.world_size;
    cfg.dist.local_rank = env.local_rank;
    cfg.dist.master_addr = env.master_addr;
    cfg.dist.master_port = env.master_port;
    cfg.dist.timeout_s = a->dist_timeout;
    cfg.dist.zero = a->zero != 0;
    cfg.dist.bucket_mb = a->bucket_mb;
    std::string command;
    for (const auto& arg : launch_argv()) command += (command.empty() ? "" : " ") + shell_quote(arg);
    auto summary = train::run_training(cfg, a->resume, command);
    if (summary.stopped_by_signal != 0) {
      if (train::is_writer(cfg.dist)) {
        const bool has_resume = std::find(launch_argv().begin(), launch_argv().end(), "--resume") != launch_argv().end();
        fmt::print(stderr, "qad: stopped by {} after step {} of {}; checkpoint {}\nqad: to continue, run the same "
                   "command with --resume:\n  {}{}\n", GracefulStop::name(summary.stopped_by_signal), summary.steps,
                   cfg.run.steps, summary.checkpoint.empty() ? std::string("(none)") : summary.checkpoint.string(),
                   command, has_resume ? "" : " --resume");
      }
      throw CLI::RuntimeError(128 + summary.stopped_by_signal);  // the shell's convention for "ended by signal N"
    }
    if (train::is_writer(cfg.dist)) {
      fmt::print("done: {} steps, {} tokens in {:.1f} s; run directory {}\n", summary.steps, summary.tokens,
                 summary.train_seconds, summary.run_dir.string());
    }
  });
}

}  // namespace

QAD_REGISTER_COMMAND(200, register_distill);

}  // namespace qad::cli
