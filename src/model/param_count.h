// Parameter counts from a config alone, without building the model or reading weights: what `qad distill --plan`
// needs to predict memory before anything is loaded. Mirrors the module constructors (causal_lm.cc, layers.cc,
// moe_block.cc, nemotron_h.cc, mamba2.cc); tests/model/param_count_test.cc holds it to the built fixture models.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace qad::model {

// One model::Linear as CausalLM::linears() lists it (same order and names).
struct LinearShape {
  std::string name;  // HF module path ("model.layers.0.self_attn.q_proj", "lm_head")
  int64_t in_features = 0, out_features = 0;
  bool bias = false;
  bool tied = false;  // lm_head sharing the embedding: its weight is not a parameter of its own
};

std::vector<LinearShape> linear_shapes(const ModelConfig& c);

struct ParamCount {
  int64_t total = 0;        // elements of every tensor hf_tensors() lists (what the checkpoint holds)
  int64_t frozen = 0;       // never trained by gradients (NemotronH's router correction bias)
  int64_t routers = 0;      // router weights (".mlp.gate", ".mixer.gate"): frozen by optim.freeze_routers
  int64_t linear_weights = 0;  // weights of the Linears that own one (a tied lm_head does not)
  int64_t largest = 0;      // elements of the largest tensor
};

ParamCount count_parameters(const ModelConfig& c);

}  // namespace qad::model
