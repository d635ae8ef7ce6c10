// `qad distill --plan`: the predicted memory per GPU of a run, from the teacher's config.json, the recipe and the
// flags alone (no weights are read): weights, fake-quantized weight cache, gradients, FP32 master weights and AdamW
// moments (on the GPU, sharded by ZeRO-1, or offloaded to host memory), activations, the loss head's workspace and
// the CKA rows; the peak of the forward/backward and of the optimizer update; whether it fits the device; and what
// would make it fit. The model is CUDA training in BF16 with the fused kernels (docs/train.md, "Memory plan").
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/config.h"

namespace qad::train {

struct PlanSettings {
  int world_size = 1;
  bool zero = true;                    // ZeRO-1 when world_size > 1
  bool fully_sharded = false;          // --zero 3 (any world size): weights, gradients and state 1/world_size
  int64_t quantized_weight_elements = -1;  // weights the NVFP4 hooks cache; -1: the default selection (see .cc)
  // --teacher-cache: the cache's top-k (plan_report reads it from the manifest). No teacher model is loaded and the
  // loss head takes the logits path (the fused lm_head + KL needs the teacher's hidden state).
  int64_t cache_top_k = 0;
  int64_t cache_value_bytes = 2;  // bytes of a cached logit (the manifest's value dtype)
};

struct PlanRow {
  std::string what;
  double gpu = 0;   // bytes per GPU
  double host = 0;  // bytes of page-locked host memory per rank
  std::string when; // "always", "forward/backward", "update"
};

struct MemoryPlan {
  std::string model;       // "Qwen3ForCausalLM, 8.19 B parameters"
  int64_t parameters = 0, trained = 0, tokens = 0;  // tokens per micro-batch and rank
  std::vector<PlanRow> rows;
  double resident = 0;     // on the GPU for the whole run (weights, cache, optimizer state on the GPU, staging)
  double step_peak = 0;    // resident + what the forward/backward adds at its peak (end of the forward)
  double update_peak = 0;  // resident + what the optimizer update adds (every gradient)
  // Fully sharded only (0 otherwise): loading (both models whole before they are sharded), and validation /
  // checkpoints / exports (resident + the whole student gathered).
  double startup_peak = 0, whole_student_peak = 0;
  double peak = 0;         // max of all: the prediction of the CUDA allocator's peak allocated bytes
  double host = 0;         // page-locked host memory per rank
  bool rough = false;      // MoE / hybrid layers: the activation formula is an estimate, not measured
};

MemoryPlan plan_memory(const model::ModelConfig& model, const TrainConfig& cfg, const PlanSettings& settings);

// Bytes the CUDA allocator's count leaves out but the device must hold (context, library workspaces), and the share
// of the device lost to the allocator's fragmentation: a plan fits when peak + reserve <= (1 - share) * device.
constexpr double kDeviceReserveBytes = 1.5e9;
constexpr double kFragmentationShare = 0.03;

// The plan as a table with the verdict against `device_bytes` (when known) and, when it does not fit (or is within
// 10% of the limit), suggestions computed by planning the changed configuration: offload, ZeRO-1, activation
// checkpointing, a smaller micro-batch with gradient accumulation.
std::string format_plan(const MemoryPlan& plan, const model::ModelConfig& model, const TrainConfig& cfg,
                        const PlanSettings& settings, std::optional<double> device_bytes,
                        std::optional<double> host_available_bytes);

// `qad distill --plan`: reads the teacher's config.json (any checkpoint kind checkpoint::load reads; no weights),
// plans cfg for `settings` and formats it against the device's memory: `device_gb` when given, else the CUDA
// device cfg.run.device names (auto: cuda:0 when one is visible).
std::string plan_report(const TrainConfig& cfg, PlanSettings settings, std::optional<double> device_gb);

}  // namespace qad::train
