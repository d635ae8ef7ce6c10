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
#include "train/metrics.h"

namespace qad::train {

// Reads up to `max_batches` batches from a fresh pass of `loader` (restarted at its first batch, so every
// validation sees the same tokens). teacher may be null. CKA is measured at every decoder layer whatever the
// loss trains, so that mean_cka means one thing in every run (a run whose CKA term covers the last third of the
// layers is compared with QAD over all of them); `extra_cka_layers` adds other hidden states (e.g. "norm", when
// the loss names it) to the per-layer values, outside the mean.
ValidResult validate(model::CausalLM& student, model::CausalLM* teacher, data::Loader& loader, int64_t max_batches,
                     const std::vector<std::string>& extra_cka_layers, torch::Device device,
                     int64_t chunk_tokens = 4096);

}  // namespace qad::train
