// `qad teacher-cache`: the teacher's top-k logits (and CKA rows) for every row a `qad distill` run with the same
// settings trains on, so that `qad distill --teacher-cache DIR` needs no teacher model (docs/teacher_cache.md).
// Takes distill's configuration (--config, flags, --set); the work is train/teacher_cache_build.h.
#include <fmt/format.h>

#include <array>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "train/config.h"
#include "train/config_sources.h"
#include "train/teacher_cache_build.h"

namespace qad::cli {
namespace {

// The distill settings the cache's rows depend on (and the teacher's device), as --flag VALUE → key.
const std::vector<std::array<const char*, 3>> kFlags = {
    {"--teacher", "run.teacher", "teacher: an HF model directory (the one qad distill --teacher will name)"},
    {"--data", "data.path", "training data: a prepared dataset dir, or .jsonl/.txt (.xz/.zst)"},
    {"--valid-data", "data.valid_path", "held-out data qad distill will use (it decides the train split)"},
    {"--out", "run.out", "cache directory (manifest.json, shard-*.bin)"},
    {"--steps", "run.steps", "optimizer steps of the distill run(s) the cache serves"},
    {"--grad-accum", "optim.grad_accum", "micro-batches per optimizer step"},
    {"--batch-size", "data.batch_size", "rows per micro-batch per rank (also the teacher's forward batch)"},
    {"--seq-len", "data.seq_len", "tokens per row"},
    {"--data-seed", "data.seed", "shuffle seed"},
    {"--seed", "run.seed", "seed of the CKA token subsample (fixed at build time)"},
    {"--cka-subsample", "loss.cka_subsample_tokens", "CKA tokens per micro-batch (0 = all)"},
    {"--cka-layers", "loss.cka_layers", "comma-separated hidden-state names (default: every layers.N)"},
    {"--device", "run.device", "auto | cpu | cuda | cuda:N"},
};

void register_teacher_cache(CLI::App& app) {
  auto recipe = std::make_shared<std::string>();
  auto method = std::make_shared<std::string>();
  auto sets = std::make_shared<std::vector<std::string>>();
  auto o = std::make_shared<train::TeacherCacheOptions>();
  auto* cmd = app.add_subcommand("teacher-cache", "Run the teacher once over a distill run's rows and store its top-k "
                                                  "logits (and CKA hidden rows) for qad distill --teacher-cache");
  cmd->footer("Examples:\n  qad teacher-cache --config recipes/qad.yaml --teacher ../shared/models/qwen3-16m-teacher --data ../shared/corpus/prose_train.jsonl.xz --steps 400 --batch-size 32 --seq-len 512 --top-k 64 --out runs/tcache\n  qad teacher-cache --method cka-qad --teacher ../shared/models/qwen3-16m-teacher --data ../shared/corpus/prose_train.jsonl.xz --steps 400 --batch-size 16 --ranks 2 --out runs/tcache-cka");  // each one is run by tests/usage
  cmd->add_option("--config", *recipe, "the distill recipe YAML (its data, steps and CKA settings are used)");
  cmd->add_option("--method", *method, "qad | cka-qad (cka-qad also stores the CKA hidden rows)");
  auto storage = std::make_shared<std::vector<std::string>>(kFlags.size());
  auto opts = std::make_shared<std::vector<CLI::Option*>>();
  for (size_t i = 0; i < kFlags.size(); ++i) opts->push_back(cmd->add_option(kFlags[i][0], (*storage)[i], kFlags[i][2]));
  cmd->add_option("--set", *sets, "any distill setting as section.key=value; repeatable");
  cmd->add_option("--top-k", o->top_k, "teacher logits kept per position (qad distill may use fewer); "
                  "256 with qad distill --top-k-tail matched the live teacher within seed noise, 64 costs a quarter "
                  "of the disk for +2% KL (docs/teacher_cache.md)")
      ->capture_default_str();
  cmd->add_option("--values", o->values, "dtype of the cached logits and hidden rows: auto (the teacher's: BF16 on "
                  "CUDA, FP32 on CPU; lossless), bfloat16, float16, float32")->capture_default_str();
  cmd->add_option("--ranks", o->ranks, "ranks qad distill will run on: the rows follow the global batch "
                  "(--batch-size x --ranks); any split of the same global batch reads the cache")->capture_default_str();
  cmd->add_option("--compression", o->compression_level, "zstd level of the shards (0 = none)")->capture_default_str();
  cmd->add_option("--shard-mb", o->shard_mb, "uncompressed MB per shard file")->capture_default_str();
  cmd->callback([=] {
    train::ConfigSources src;
    src.recipe_path = *recipe;
    if (!recipe->empty()) src.recipe = train::load_recipe(*recipe);
    src.method = *method;
    for (size_t i = 0; i < kFlags.size(); ++i) {
      if ((*opts)[i]->count()) {
        train::merge_into(src.flags, train::parse_override(std::string(kFlags[i][1]) + "=" + (*storage)[i]));
      }
    }
    for (const auto& s : *sets) train::merge_into(src.flags, train::parse_override(s));
    auto cfg = train::assemble_config(src).config;
    cfg.validate();
    auto s = train::build_teacher_cache(cfg, *o);
    fmt::print("done: {} rows ({} computed) in {:.1f} s; top-{} mass {:.4f} of the teacher's probability; {:.0f} "
               "bytes per token raw, {:.0f} on disk; cache {}\n", s.rows, s.rows_computed, s.seconds, o->top_k,
               s.topk_mass, static_cast<double>(s.row_bytes) / static_cast<double>(cfg.data.seq_len),
               s.bytes_per_token, cfg.run.out);
  });
}

}  // namespace

QAD_REGISTER_COMMAND(250, register_teacher_cache);

}  // namespace qad::cli
