// TrainConfig: everything one `qad distill` run needs, in small per-component structs. Built from defaults,
// then a recipe YAML (recipes/*.yaml), then command-line overrides; stored as run.json's "config" so that a
// resumed run can check it continues the same job. Every section lists its settings once (`fields` in
// config.cc, util/config_fields.h); member names are the configuration keys.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quant/quantize_model.h"
#include "util/config_fields.h"

namespace qad::train {

using config::merge_into;  // deep-merges a JSON patch (util/config_fields.h)

// What is trained and against what. pretrain: plain cross-entropy training of an unquantized model (the
// demo's teacher); ptq: calibrate only, no training steps.
enum class Method { kPtq, kQat, kQad, kCkaQad, kPretrain };
std::string method_name(Method m);  // "ptq", "qat", "qad", "cka-qad", "pretrain" (run.json's names)
Method parse_method(const std::string& s);

struct LossConfig {
  double kl = 1.0;              // weight of the forward KL(teacher || student)
  double ce = 0.0;              // weight of the cross-entropy on the data's labels (QAT)
  double cka = 0.0;             // lambda of the CKA term (0 = off)
  double temperature = 1.0;     // KL temperature (loss scaled by T^2)
  int64_t top_k = 0;            // top-k KL; 0 = full vocabulary
  bool top_k_tail = false;      // top-k KL over the top k and one tail category (the rest of the vocabulary) with
                                // the teacher's true probabilities, instead of renormalising both over the top k
  int64_t chunk_tokens = 4096;  // tokens per FP32 chunk of the KL / CE
  std::string cka_estimator = "biased";  // biased | debiased
  int64_t cka_subsample_tokens = 1024;   // random valid tokens per micro-batch for the CKA term; 0 = all
  bool cka_dynamic_balance = false;      // scale the CKA term to the KL's magnitude
  std::vector<std::string> cka_layers;   // empty = every decoder layer's output ("layers.N")
  bool cka_tf32 = true;                  // TF32 for FP32 matmuls on CUDA (the CKA products; the model is BF16)
  bool cka_bf16_products = false;        // CUDA: BF16 products with FP32 accumulation (the Gram form of the biased
                                         // estimator; loss/cka.h); recipes/cka_qad.yaml turns it on; false (the
                                         // default, so that runs saved before the setting existed resume as they
                                         // ran): FP32 / TF32 products
  bool log_ce = true;                    // compute CE (no gradient) for the log even when its weight is 0
  int fused_head = -1;                   // lm_head + KL/CE fused over token chunks (loss/fused_head_losses.h):
                                         // -1 where the model is on CUDA, 1 always (tests), 0 never; not a YAML key
  double router_balance = 0.0;           // MoE load-balancing loss (Switch / transformers' aux loss); 0 = off
};

struct OptimConfig {
  double lr = 1e-5;             // peak learning rate
  double min_lr_ratio = 0.0;    // final lr = lr * min_lr_ratio
  std::string schedule = "cosine";  // cosine | linear | constant (after warmup)
  double warmup_fraction = 0.05;    // of the total steps (used when warmup_steps < 0)
  int64_t warmup_steps = -1;
  double weight_decay = 0.0;    // AdamW, on tensors with >= 2 dims (not norms, not biases)
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double grad_clip = 1.0;       // max global L2 norm; 0 = off
  int64_t grad_accum = 1;       // micro-batches per optimizer step
  bool freeze_routers = false;  // MoE: keep the routers ("mlp.gate") at the teacher's weights
  std::string offload = "none"; // none | optimizer: FP32 master + moments in host memory (train/offload_adamw.h)
};

struct DataConfig {
  std::string path;             // prepared dataset dir, or .jsonl/.txt (optionally .xz/.zst) prepared on the fly
  std::string valid_path;       // optional held-out dataset/file; else the dataset's validation split
  int64_t seq_len = 512;
  int64_t batch_size = 8;       // rows per micro-batch per rank
  std::string mode = "pack";    // pack | pad
  std::string doc_end = "eos";  // after each text document when .jsonl/.txt is prepared on the fly (--doc-end)
  std::string bos = "auto";     // before it: auto = the tokenizer template's special tokens (BOS), or never
  double valid_fraction = 0.02; // validation split when no valid_path (applied by the loader)
  uint64_t seed = 0;            // shuffle seed
};

struct QuantConfig {
  int64_t calib_batches = 16;   // PTQ calibration batches (train split)
  std::string student;          // optional NVFP4 checkpoint dir to start from instead of PTQ
  // Which Linears and how (docs/quant.md); calib_samples 0 = calib_batches x batch_size x world_size rows.
  quant::QuantConfig options = {.calib_samples = 0};
};

struct RunConfig {
  std::string teacher;          // HF dir (the BF16 model; also the student's initial weights)
  std::string teacher_cache;    // qad teacher-cache output: the teacher's targets come from it, no teacher model
  std::string out;              // run directory
  std::string name;             // run.json "name"; default = the out dir's name
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  int64_t steps = 1000;         // optimizer steps
  int64_t log_every = 1;
  int64_t valid_every = 100;    // 0 = only at the start and the end
  int64_t valid_batches = 16;
  std::string valid_tasks;      // optional task .jsonl: greedy task accuracy at each validation (docs/train.md)
  int64_t valid_task_items = 256;  // its first N items
  int64_t valid_task_max_new_tokens = 200;
  std::string best_metric;      // keep the best checkpoint in RUN_DIR/best by this validation metric ("" = off)
  int64_t checkpoint_every = 500;  // 0 = final only; -1 = none at all (benchmarks)
  int64_t keep_checkpoints = 2;
  int64_t max_bad_steps = 10;   // stop after this many consecutive non-finite steps
  uint64_t seed = 0;            // CKA subsampling and anything else random in the step
  bool activation_checkpointing = false;
  bool export_bf16 = false;
  bool export_nvfp4 = true;
};

// Fault injection for tests (hidden flags): never set in recipes.
struct DebugConfig {
  std::vector<int64_t> nan_at_steps;  // multiply the loss by NaN at these optimizer steps
  int64_t kill_at_step = -1;          // raise SIGKILL right after this step's update (before its checkpoint)
  int kill_rank = -1;                 // only this rank raises it (-1: every rank)
  std::vector<int64_t> signal_at_steps;  // raise SIGTERM right after these steps (a step listed twice: twice)
  // after this step, wait (up to 10 minutes) for SIGINT / SIGTERM: a run that is still going, however fast the
  // machine, for tests that act on a live run
  int64_t hold_at_step = -1;
  // after this step's update, set one student weight to +Inf (an overflow the loss has not shown yet): the
  // checkpoint guard must refuse to write it
  int64_t inf_weight_at_step = -1;
  // read every step's values before the next step is queued (the trainer otherwise reads step N after step N+1 is
  // queued, where the step runs on the device: Trainer::loop); tests compare both
  bool sequential_steps = false;
  // the fused AdamW's device-side step on the CPU too (its C++ reference): the CPU tests' way onto the path above
  bool fused_adamw_on_cpu = false;
};

struct DistConfig {  // set by the launcher and --dist-* flags, not by recipes (docs/dist.md)
  int rank = 0, world_size = 1;
  int local_rank = 0;                 // cuda:local_rank
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  double timeout_s = 600;             // a collective or the rendezvous waiting longer fails the run
  bool zero = true;                   // ZeRO-1: shard master weights and moments over the ranks
  bool fully_sharded = false;         // --zero 3: shard weights, gradients and optimizer state (and the teacher)
  double bucket_mb = 25;              // gradient all-reduce bucket size
};

struct TrainConfig {
  Method method = Method::kQad;
  LossConfig loss;
  OptimConfig optim;
  DataConfig data;
  QuantConfig quant;
  RunConfig run;
  DebugConfig debug;
  DistConfig dist;

  nlohmann::json to_json() const;  // every field (the "config" of run.json), without dist
  // Reads a (partial) object over the current values; unknown keys throw naming `label` and the key.
  void merge_json(const nlohmann::json& j, const std::string& label);
  void validate() const;  // throws qad::Error naming the offending setting
};

// The defaults a method implies before any recipe (loss weights).
TrainConfig defaults_for(Method m);
// Reads a recipe YAML file as JSON (nested maps → objects; scalars → bool / integer / float / string;
// quoted scalars stay strings).
nlohmann::json load_recipe(const std::filesystem::path& path);
// "section.key=value" → a JSON patch {"section":{"key":value}}; the value is parsed like a YAML scalar.
nlohmann::json parse_override(const std::string& assignment);

// The human-readable effective configuration (printed at start).
std::string describe(const TrainConfig& c);

}  // namespace qad::train
