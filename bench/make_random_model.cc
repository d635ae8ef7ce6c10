// Writes a Qwen3-shaped model with random weights (N(0, 0.02), norms 1) as an HF directory, optionally with
// another model's tokenizer files, so that `qad distill` can train at a real model's size without downloading
// it (scripts/experiment_multigpu.sh). The shapes are Qwen3's published configs (tied embeddings).
//   ./build/make_random_model --shape qwen3-1.7b --out DIR [--tokenizer-from DIR] [--seed N]
#include <fmt/format.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "model/causal_lm.h"
#include "model/config.h"

namespace {

nlohmann::json qwen3_shape(const std::string& name) {
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}}, {"model_type", "qwen3"}, {"vocab_size", 151936},
                      {"head_dim", 128}, {"max_position_embeddings", 40960}, {"rms_norm_eps", 1e-6},
                      {"tie_word_embeddings", true}, {"hidden_act", "silu"}, {"rope_theta", 1000000.0},
                      {"torch_dtype", "bfloat16"}, {"num_key_value_heads", 8}, {"num_attention_heads", 16},
                      {"num_hidden_layers", 28}};
  if (name == "qwen3-0.6b") {
    j.update({{"hidden_size", 1024}, {"intermediate_size", 3072}});
  } else if (name == "qwen3-1.7b") {
    j.update({{"hidden_size", 2048}, {"intermediate_size", 6144}});
  } else if (name == "qwen3-4b") {
    j.update({{"hidden_size", 2560}, {"intermediate_size", 9728}, {"num_hidden_layers", 36}, {"num_attention_heads", 32}});
  } else {
    throw std::runtime_error("unknown --shape " + name + " (qwen3-0.6b, qwen3-1.7b, qwen3-4b)");
  }
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "qwen3-1.7b", out, tok;
  uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--shape") shape = next();
    else if (a == "--out") out = next();
    else if (a == "--tokenizer-from") tok = next();
    else if (a == "--seed") seed = std::stoull(next());
    else {
      fmt::print(stderr, "usage: make_random_model --shape qwen3-1.7b --out DIR [--tokenizer-from DIR] [--seed N]\n");
      return 2;
    }
  }
  if (out.empty()) {
    fmt::print(stderr, "make_random_model: --out DIR is required\n");
    return 2;
  }
  try {
    auto config = qad::model::parse_config(qwen3_shape(shape), shape + " shape");
    qad::model::CausalLM lm(config);
    lm->to(torch::kBFloat16);
    torch::manual_seed(seed);
    torch::NoGradGuard ng;
    int64_t params = 0;
    for (auto& [name, p] : lm->hf_tensors()) {
      auto t = p;
      if (name.find("norm") != std::string::npos) t.fill_(1.0);
      else t.normal_(0.0, 0.02);
      params += p.numel();
    }
    lm->save(out);
    if (!tok.empty()) {
      for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        const auto src = std::filesystem::path(tok) / f;
        if (std::filesystem::exists(src)) {
          std::filesystem::copy_file(src, std::filesystem::path(out) / f,
                                     std::filesystem::copy_options::overwrite_existing);
        }
      }
    }
    fmt::print("{}: {} parameters ({:.3f} B) → {}\n", shape, params, params / 1e9, out);
  } catch (const std::exception& e) {
    fmt::print(stderr, "make_random_model: {}\n", e.what());
    return 1;
  }
  return 0;
}
