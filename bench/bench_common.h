// What the GPU benchmarks share: the Qwen3 shapes they measure, a model of such a shape with random weights
// (std 0.02, norms 1: the statistics of a trained model's weights, which is all a speed measurement needs),
// and running the Python baseline script to capture what it prints.
#pragma once
#include <torch/torch.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "model/causal_lm.h"
#include "model/config.h"

namespace qad::bench {

// config.json of a Qwen3 shape: "0.6b", "1.7b", "4b" or "8b" (a "qwen3-" prefix is accepted); the published
// configs' sizes (8b: untied embeddings, 8.19 B parameters).
inline nlohmann::json qwen3_shape(std::string name) {
  if (name.rfind("qwen3-", 0) == 0) name = name.substr(6);
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}}, {"model_type", "qwen3"}, {"vocab_size", 151936},
                      {"head_dim", 128}, {"max_position_embeddings", 40960}, {"rms_norm_eps", 1e-6},
                      {"tie_word_embeddings", true}, {"hidden_act", "silu"}, {"rope_theta", 1000000.0},
                      {"torch_dtype", "bfloat16"}, {"num_key_value_heads", 8}, {"num_attention_heads", 16},
                      {"num_hidden_layers", 28}};
  if (name == "0.6b") {
    j.update({{"hidden_size", 1024}, {"intermediate_size", 3072}});
  } else if (name == "1.7b") {
    j.update({{"hidden_size", 2048}, {"intermediate_size", 6144}});
  } else if (name == "4b") {
    j.update({{"hidden_size", 2560}, {"intermediate_size", 9728}, {"num_hidden_layers", 36}, {"num_attention_heads", 32}});
  } else if (name == "8b") {
    j.update({{"hidden_size", 4096}, {"intermediate_size", 12288}, {"num_hidden_layers", 36},
              {"num_attention_heads", 32}, {"tie_word_embeddings", false}});
  } else {
    throw std::runtime_error("unknown Qwen3 shape " + name + " (0.6b, 1.7b, 4b, 8b)");
  }
  return j;
}

// Sets every weight of `lm` from the seeded generator: norms 1, everything else normal(0, 0.02).
inline void randomize_weights(model::CausalLM& lm, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard ng;
  for (auto& [name, p] : lm->hf_tensors()) {
    if (name.ends_with("norm.weight")) {
      p.fill_(1.0);
    } else {
      p.normal_(0.0, 0.02);
    }
  }
}

// A model of config `c` in BF16 on the GPU with randomize_weights(seed).
inline model::CausalLM random_cuda_model(const model::ModelConfig& c, uint64_t seed) {
  model::CausalLM lm(c);
  lm->to(torch::kCUDA, torch::kBFloat16);
  randomize_weights(lm, seed);
  return lm;
}

// Runs a shell command and returns its standard output (the baselines print their figures there).
inline std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  pclose(p);
  return out;
}

}  // namespace qad::bench
