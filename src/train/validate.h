// Held-out evaluation of the student against the teacher: KL(teacher || student), perplexity on the data's
// labels, top-1 agreement with the teacher and per-layer linear CKA (Nguyen et al.'s minibatch CKA, biased
// HSIC averaged over the validation batches).
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/loader.h"
#include "model/causal_lm.h"

namespace qad::train {

struct ValidResult {
  std::optional<double> kl;         // nats per loss token; unset without a teacher
  double ce = 0, ppl = 0;           // on the data's labels
  std::optional<double> agreement;  // fraction of loss tokens where both argmaxes agree
  std::optional<double> mean_cka;   // mean over layers
  std::optional<double> task_accuracy;  // run.valid_tasks (task_validation.h); set by the trainer
  std::vector<std::pair<std::string, double>> cka;
  // MoE with a teacher: per MoE layer, the mean over loss tokens of |student top-k ∩ teacher top-k| / k.
  std::optional<double> mean_router_agreement;
  std::vector<std::pair<std::string, double>> router_agreement;
  int64_t tokens = 0, batches = 0;
};

// Reads up to `max_batches` batches from a fresh pass of `loader` (restarted at its first batch, so every
// validation sees the same tokens). teacher may be null. cka_layers empty = every decoder layer.
ValidResult validate(model::CausalLM& student, model::CausalLM* teacher, data::Loader& loader, int64_t max_batches,
                     const std::vector<std::string>& cka_layers, torch::Device device, int64_t chunk_tokens = 4096);

}  // namespace qad::train
