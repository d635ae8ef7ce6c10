// Writes a Qwen3-shaped model with random weights (N(0, 0.02), norms 1) as an HF directory, optionally with
// another model's tokenizer files, so that `qad distill` can train at a real model's size without downloading
// it (scripts/experiment_multigpu.sh). The shapes are Qwen3's published configs (tied embeddings).
//   ./build/make_random_model --shape qwen3-1.7b --out DIR [--tokenizer-from DIR] [--seed N]
#include <fmt/format.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "bench_common.h"
#include "model/causal_lm.h"
#include "model/config.h"

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
    auto config = qad::model::parse_config(qad::bench::qwen3_shape(shape), shape + " shape");
    qad::model::CausalLM lm(config);
    lm->to(torch::kBFloat16);
    qad::bench::randomize_weights(lm, seed);
    int64_t params = 0;
    for (auto& [name, p] : lm->hf_tensors()) params += p.numel();
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
