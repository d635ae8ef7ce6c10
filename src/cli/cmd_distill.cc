// `qad distill`: QAD, CKA-QAD, QAT or PTQ of a teacher into an NVFP4 student (docs/train.md). The
// configuration is the method's defaults, then --config recipe.yaml, then the flags below, then --set.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/load.h"
#include "cli/commands.h"
#include "dist/launch_env.h"
#include "dist/local_launcher.h"
#include "model/config.h"
#include "train/config.h"
#include "train/config_sources.h"
#include "train/distributed.h"
#include "train/memory_plan.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/shell_quote.h"
#include "util/signals.h"

namespace qad::cli {
namespace {

struct DistillArgs {
  std::string recipe, method;
  std::vector<std::string> sets;
  std::vector<std::pair<std::string, std::string>> values;  // (config key, value) of flags given
  bool resume = false, print_only = false, plan = false;
  double gpu_memory_gb = 0;  // --plan's device memory (0: the CUDA device's)
  int nproc_per_node = 0;  // > 0: start that many local ranks (docs/dist.md)
  double dist_timeout = 600, bucket_mb = 25;
  int zero = 1;
  std::string kill_rank;
};

// --flag VALUE → key=VALUE, for the options a user changes most; everything else through --set.
const std::vector<std::array<const char*, 3>> kValueFlags = {
    {"--teacher", "run.teacher", "teacher: an HF model directory (BF16 or FP32), or any checkpoint qad loads (docs/eval.md)"},
    {"--data", "data.path", "training data: a prepared dataset dir, or .jsonl/.txt (.xz/.zst) prepared with the teacher's tokenizer"},
    {"--valid-data", "data.valid_path", "held-out data (same forms); default: data.valid_fraction of --data"},
    {"--out", "run.out", "run directory (metrics.jsonl, run.json, checkpoints/, export/)"},
    {"--teacher-cache", "run.teacher_cache", "train from a teacher cache (qad teacher-cache) instead of a teacher "
                                            "model: top-k KL (and CKA rows) read from it (docs/teacher_cache.md)"},
    {"--student", "quant.student", "start from this checkpoint instead of PTQ-calibrating the teacher: an NVFP4 export "
                                  "or a training checkpoint / run directory keeps its quantization"},
    {"--steps", "run.steps", "optimizer steps"},
    {"--lr", "optim.lr", "peak learning rate"},
    {"--schedule", "optim.schedule", "cosine | linear | constant"},
    {"--warmup-steps", "optim.warmup_steps", "linear warmup steps (-1 = use --warmup-ratio)"},
    {"--warmup-ratio", "optim.warmup_fraction", "linear warmup as a fraction of --steps (used when --warmup-steps is -1)"},
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
    {"--calib-samples", "quant.options.calib_samples", "PTQ calibration rows (0 = --calib-batches global batches); "
                                                      "the same rows qad quantize --calib-samples takes (docs/quant.md)"},
    {"--calib-batches", "quant.calib_batches", "PTQ calibration batches when --calib-samples is 0"},
    {"--kv-cache", "quant.options.kv_cache", "KV cache: none | fp8 (FP8 E4M3 with calibrated per-layer k_scale / "
                                             "v_scale, trained fake-quantized and exported; docs/quant.md)"},
    {"--block-scales", "quant.options.block_scales", "weight block scales: dynamic | static_mse (MSE-searched E4M3 "
                                                     "codes, frozen in training, exported; docs/quant.md)"},
    {"--fp8", "quant.options.fp8_layers", "comma-separated module globs quantized to FP8 (W8A8) instead of NVFP4 or "
                                          "high precision; exported as MIXED_PRECISION (docs/quant.md)"},
    {"--seed", "run.seed", "seed of the step randomness (CKA subsampling)"},
    {"--data-seed", "data.seed", "shuffle seed"},
    {"--device", "run.device", "auto | cpu | cuda | cuda:N"},
    {"--offload", "optim.offload", "none | optimizer: FP32 master weights and AdamW moments in pinned host memory, "
                                   "streamed through the GPU update (one GPU too small for 12 bytes/parameter)"},
    {"--valid-every", "run.valid_every", "validate every N steps (0 = start and end only)"},
    {"--valid-batches", "run.valid_batches", "batches per validation (0: no validation)"},
    {"--checkpoint-every", "run.checkpoint_every", "checkpoint every N steps (0 = final only)"},
    {"--max-bad-steps", "run.max_bad_steps", "stop after N consecutive non-finite steps"},
    {"--log-every", "run.log_every", "progress line every N steps"},
    {"--name", "run.name", "run name in reports"},
};
// Flags without a value: each sets its key to a fixed value.
const std::vector<std::array<const char*, 4>> kBoolFlags = {
    {"--activation-checkpointing", "run.activation_checkpointing", "true", "recompute each layer in backward"},
    {"--export-bf16", "run.export_bf16", "true", "also export the student in BF16 (export/bf16)"},
    {"--cka-dynamic-balance", "loss.cka_dynamic_balance", "true", "scale the CKA term to the KL's magnitude"},
    {"--top-k-tail", "loss.top_k_tail", "true",
     "top-k KL with the rest of the vocabulary as one category (teacher's true probabilities, dense gradient) "
     "instead of renormalising over the top k; with --teacher-cache only at --temperature 1"},
    {"--weight-only", "quant.options.quantize_inputs", "false",
     "NVFP4 weights only, activations unquantized (W4A16_NVFP4, what Hopper serves)"},
};


// The effective configuration (train/config_sources.h: method defaults → recipe → flags → --set), with its
// warnings printed once (by rank 0 or the launcher).
train::TrainConfig assemble(const DistillArgs& a, bool print_warnings) {
  train::ConfigSources src;
  src.recipe_path = a.recipe;
  if (!a.recipe.empty()) src.recipe = train::load_recipe(a.recipe);
  src.method = a.method;
  for (const auto& [k, v] : a.values) train::merge_into(src.flags, train::parse_override(k + "=" + v));
  for (const auto& s : a.sets) train::merge_into(src.flags, train::parse_override(s));
  auto assembled = train::assemble_config(src);
  if (print_warnings) {
    for (const auto& w : assembled.warnings) fmt::print(stderr, "qad: warning: {}\n", w);
  }
  return assembled.config;
}

// What --help shows for a value flag: the type and the default of its setting (before any recipe).
void describe_value_flag(CLI::Option* opt, const std::string& key) {
  static const nlohmann::json defaults = train::TrainConfig{}.to_json();
  std::string pointer = "/" + key;
  std::replace(pointer.begin(), pointer.end(), '.', '/');
  if (!defaults.contains(nlohmann::json::json_pointer(pointer))) return;
  const auto& v = defaults.at(nlohmann::json::json_pointer(pointer));
  if (v.is_number_integer() || v.is_number_unsigned()) {
    opt->type_name("INT");
  } else if (v.is_number_float()) {
    opt->type_name("FLOAT");
  } else if (v.is_array()) {
    opt->type_name("LIST");
  } else {
    opt->type_name(key == "run.teacher" || key == "run.out" || key == "data.path" || key == "data.valid_path" ||
                           key == "quant.student"
                       ? "PATH"
                       : "TEXT");
  }
  const bool shown = v.is_number() || (v.is_string() && !v.get<std::string>().empty());
  if (shown) opt->default_str(v.is_string() ? v.get<std::string>() : v.dump());
}

void register_distill(CLI::App& app) {
  auto a = std::make_shared<DistillArgs>();
  auto* cmd = app.add_subcommand("distill", "Quantization-aware distillation of a teacher into an NVFP4 student "
                                            "(QAD, CKA-QAD, QAT, PTQ)");
  cmd->footer("Examples:\n  qad distill --config recipes/qad.yaml --teacher ../shared/models/qwen3-16m-teacher --data ../shared/corpus/prose_train.jsonl.xz --out runs/qad\n  qad distill --config recipes/cka_qad.yaml --teacher ../shared/models/qwen3-16m-teacher --data ../shared/corpus/prose_train.jsonl.xz --out runs/cka --steps 2000 --set loss.top_k=1024\n  qad distill --method ptq --teacher ../shared/models/qwen3-16m-teacher --data ../shared/corpus/prose_train.jsonl.xz --out runs/ptq --set quant.options.method=mse\n  qad distill --config recipes/qad.yaml --kv-cache fp8 --teacher ../shared/models/qwen3-16m-teacher --data ../shared/corpus/prose_train.jsonl.xz --out runs/qad-kv-fp8\n  qad distill --method ptq --block-scales static_mse --teacher ../shared/models/qwen3-16m-teacher --data ../shared/corpus/prose_train.jsonl.xz --out runs/ptq-static\n  qad distill --config recipes/qad.yaml --teacher ../shared/models/qwen3-16m-teacher --batch-size 4 --seq-len 2048 --offload optimizer --plan --gpu-memory 80");  // each one is run by tests/usage
  cmd->add_option("--config", a->recipe, "recipe YAML (recipes/qad.yaml, recipes/cka_qad.yaml, recipes/qat.yaml)");
  cmd->add_option("--method", a->method, "ptq | qat | qad | cka-qad | pretrain (default: the recipe's, else qad)");
  auto values = std::make_shared<std::vector<std::pair<CLI::Option*, std::string>>>();
  auto storage = std::make_shared<std::vector<std::string>>(kValueFlags.size());
  for (size_t i = 0; i < kValueFlags.size(); ++i) {
    auto* opt = cmd->add_option(kValueFlags[i][0], (*storage)[i], kValueFlags[i][2]);
    describe_value_flag(opt, kValueFlags[i][1]);
    values->emplace_back(opt, kValueFlags[i][1]);
  }
  // --warmup was a fraction, which users of HF's --warmup_steps read as steps: a fraction is still taken (with a
  // note), a number of steps is refused with the two new names.
  auto old_warmup = std::make_shared<std::string>();
  cmd->add_option("--warmup", *old_warmup)->group("");
  auto bools = std::make_shared<std::vector<std::pair<CLI::Option*, const std::array<const char*, 4>*>>>();
  for (const auto& f : kBoolFlags) bools->emplace_back(cmd->add_flag(f[0], f[3]), &f);
  cmd->add_option("--set", a->sets, "any setting as section.key=value (e.g. --set loss.top_k=1024); repeatable");
  cmd->add_flag("--resume", a->resume, "continue the run in --out from its latest checkpoint (same configuration)");
  cmd->add_flag("--print-config", a->print_only, "print the effective configuration and exit");
  cmd->add_flag("--plan", a->plan, "print the predicted memory per GPU (weights, gradients, optimizer state, teacher, "
                "activations) and whether it fits, then exit; reads only the teacher's config.json");
  cmd->add_option("--gpu-memory", a->gpu_memory_gb, "device memory in GB for --plan (default: the CUDA device's)");
  auto nan_steps = std::make_shared<std::string>();
  auto kill_step = std::make_shared<std::string>();
  cmd->add_option("--debug-nan-at-steps", *nan_steps)->group("");  // test hooks, hidden from --help
  cmd->add_option("--debug-kill-at-step", *kill_step)->group("");
  cmd->add_option("--debug-kill-rank", a->kill_rank)->group("");
  auto signal_steps = std::make_shared<std::string>();
  cmd->add_option("--debug-signal-at-steps", *signal_steps)->group("");
  auto hold_step = std::make_shared<std::string>();
  cmd->add_option("--debug-hold-at-step", *hold_step)->group("");
  auto inf_step = std::make_shared<std::string>();
  cmd->add_option("--debug-inf-weight-at-step", *inf_step)->group("");
  cmd->add_option("--nproc-per-node", a->nproc_per_node, "start N data-parallel ranks on this machine (one per GPU; "
                  "Gloo on CPU); without it the ranks come from RANK/WORLD_SIZE/... or SLURM (docs/dist.md)");
  cmd->add_option("--dist-timeout", a->dist_timeout, "seconds a rank waits for the others (rendezvous, collectives) "
                  "before the run fails")->capture_default_str();
  cmd->add_option("--zero", a->zero, "1: shard FP32 master weights and AdamW moments over the ranks (ZeRO-1); 0: "
                  "every rank holds them; 3: fully sharded - weights, gradients, optimizer state and the teacher, "
                  "gathered layer by layer (docs/dist.md)")->capture_default_str();
  cmd->add_option("--bucket-mb", a->bucket_mb, "gradient all-reduce bucket size in MB")->capture_default_str();
  cmd->callback([=] {
    for (size_t i = 0; i < values->size(); ++i) {
      if ((*values)[i].first->count()) a->values.emplace_back((*values)[i].second, (*storage)[i]);
    }
    for (const auto& [opt, flag] : *bools) {
      if (opt->count()) a->values.emplace_back((*flag)[1], (*flag)[2]);
    }
    if (!nan_steps->empty()) a->values.emplace_back("debug.nan_at_steps", "[" + *nan_steps + "]");
    if (!kill_step->empty()) a->values.emplace_back("debug.kill_at_step", *kill_step);
    if (!a->kill_rank.empty()) a->values.emplace_back("debug.kill_rank", a->kill_rank);
    if (!signal_steps->empty()) a->values.emplace_back("debug.signal_at_steps", "[" + *signal_steps + "]");
    if (!hold_step->empty()) a->values.emplace_back("debug.hold_at_step", *hold_step);
    if (!inf_step->empty()) a->values.emplace_back("debug.inf_weight_at_step", *inf_step);
    if (!old_warmup->empty()) {
      double x = -1;
      try {
        x = std::stod(*old_warmup);
      } catch (const std::exception&) {
      }
      QAD_CHECK(x >= 0 && x < 1, "--warmup {}: ambiguous; give --warmup-steps N for a number of steps or "
                "--warmup-ratio X for a fraction of --steps", *old_warmup);
      fmt::print(stderr, "qad: note: --warmup is deprecated; it is read as --warmup-ratio {}\n", *old_warmup);
      a->values.emplace_back("optim.warmup_fraction", *old_warmup);
    }
    const auto env = dist::parse_launch_env(dist::process_env());
    auto cfg = assemble(*a, /*print_warnings=*/env.rank == 0);
    if (a->print_only) {
      fmt::print("{}", train::describe(cfg));
      return;
    }
    QAD_CHECK(a->zero == 0 || a->zero == 1 || a->zero == 3, "--zero {}: must be 0 (off), 1 (optimizer state "
              "sharded) or 3 (fully sharded)", a->zero);
    // Refused here, before minutes of loading: DataParallel::make_optimizer checks it again.
    QAD_CHECK(!(a->zero == 3 && cfg.optim.offload == "optimizer"), "--offload optimizer with --zero 3: the fully "
              "sharded optimizer keeps only its 1/N of the state on each GPU and has no host-offload path; drop "
              "--offload, or use --zero 0 to offload every rank's full state to host memory");
    if (a->zero == 3 && !cfg.run.teacher.empty()) {
      const auto dir = checkpoint::model_dir(cfg.run.teacher);
      if (std::filesystem::exists(dir / "config.json")) {
        QAD_CHECK(!model::load_config(dir).hybrid, "--zero 3: fully sharded training is not implemented for hybrid "
                  "(NemotronH) models yet ({}); use --zero 1", (dir / "config.json").string());
      }
    }
    if (a->plan) {
      train::PlanSettings ps;
      ps.world_size = a->nproc_per_node > 0 ? a->nproc_per_node : env.world_size;
      ps.zero = a->zero != 0;
      ps.fully_sharded = a->zero == 3;
      fmt::print("{}", train::plan_report(cfg, ps, a->gpu_memory_gb > 0 ? std::optional<double>(a->gpu_memory_gb)
                                                                        : std::nullopt));
      return;
    }
    QAD_CHECK(std::isfinite(a->dist_timeout) && a->dist_timeout > 0, "--dist-timeout {}: must be a positive number of "
              "seconds", a->dist_timeout);
    QAD_CHECK(std::isfinite(a->bucket_mb) && a->bucket_mb > 0, "--bucket-mb {}: must be a positive number",
              a->bucket_mb);
    cfg.validate();  // before anything runs, and before the launcher starts ranks that would each refuse it
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
    cfg.dist.fully_sharded = a->zero == 3;
    // One fully sharded process (e.g. a single-GPU check of the NCCL path) still needs its own store: a free port.
    if (cfg.dist.fully_sharded && env.source == "none") cfg.dist.master_port = dist::free_port();
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
