// Qwen3-30B-A3B-shaped MoE decoder (128 experts, top-8, expert width 768, hidden 2048, random BF16 weights) cut
// to --layers decoder layers so that the QAD step fits one H200 (teacher BF16 + student BF16 + FP32 master
// and two AdamW moments + gradients ~ 18 bytes x 0.62B parameters per layer; 6 layers + embeddings ~ 80 GB
// plus activations):
//   1. forward tokens/s (inference mode, all logits) against transformers' Qwen3MoeForCausalLM (sdpa attention,
//      its eager expert loop, and its default experts kernel where that differs), measured in the same run by
//      tools/bench_moe_hf.py;
//   2. the QAD step (teacher forward + NVFP4 student forward/backward + AdamW) against transformers doing the
//      same step without fake quantization (a lower bound on its cost: qad quantizes every expert on top).
//   ./build/bench_moe [--layers 6] [--batch 4] [--seq 2048] [--iters 5] [--no-hf] [--python python3]  (repo root)
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_common.h"
#include "model/causal_lm.h"
#include "train/memory.h"
#include "train/optimizer.h"
#include "train/step.h"
#include "train/student.h"

namespace {

nlohmann::json qwen3_30b_a3b(int64_t layers) {
  return {{"architectures", {"Qwen3MoeForCausalLM"}}, {"model_type", "qwen3_moe"}, {"vocab_size", 151936},
          {"hidden_size", 2048}, {"intermediate_size", 6144}, {"num_hidden_layers", layers},
          {"num_attention_heads", 32}, {"num_key_value_heads", 4}, {"head_dim", 128},
          {"max_position_embeddings", 40960}, {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", false},
          {"hidden_act", "silu"}, {"rope_theta", 1000000.0}, {"torch_dtype", "bfloat16"}, {"num_experts", 128},
          {"num_experts_per_tok", 8}, {"moe_intermediate_size", 768}, {"norm_topk_prob", true},
          {"decoder_sparse_step", 1}, {"mlp_only_layers", nlohmann::json::array()}};
}

template <typename F> double median_ms(int64_t warmup, int64_t iters, F&& f) {
  std::vector<double> ms;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    torch::cuda::synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    f(i);
    torch::cuda::synchronize();
    if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int64_t layers = 6, batch = 4, seq = 2048, iters = 5, warmup = 2;
  bool hf = true;
  std::string python = "python3";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--layers") layers = std::stoll(next());
    else if (a == "--batch") batch = std::stoll(next());
    else if (a == "--seq") seq = std::stoll(next());
    else if (a == "--iters") iters = std::stoll(next());
    else if (a == "--no-hf") hf = false;
    else if (a == "--python") python = next();
    else {
      fmt::print(stderr, "usage: bench_moe [--layers N] [--batch N] [--seq T] [--iters K] [--no-hf] [--python PY]\n");
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    fmt::print("bench_moe: no CUDA device; this benchmark is for the GPU machine\n");
    return 0;
  }
  const torch::Device dev(torch::kCUDA, 0);
  auto config = qad::model::parse_config(qwen3_30b_a3b(layers), "Qwen3-30B-A3B shape");
  const double tokens = static_cast<double>(batch * seq);
  auto ids = torch::randint(0, config.vocab_size, {batch, seq}, torch::TensorOptions().device(dev).dtype(torch::kLong));
  fmt::print("bench_moe: Qwen3-30B-A3B shape, {} of 48 layers, 128 experts top-8, batch {} x {} tokens, BF16\n",
             layers, batch, seq);

  // transformers first, in its own process, before this one's caching allocator holds most of the GPU.
  std::string hf_text;
  if (hf) {
    hf_text = qad::bench::run_capture(fmt::format("{} tools/bench_moe_hf.py --layers {} --batch {} --seq {} --iters {} --json 2>&1",
                                      python, layers, batch, seq, iters));
  }

  // --- forward
  double fwd_ms = 0;
  {
    auto lm = qad::bench::random_cuda_model(config, 1);
    lm->eval();
    torch::NoGradGuard ng;
    c10::InferenceMode inference;
    fwd_ms = median_ms(warmup, iters, [&](int64_t) { lm->forward(ids); });
  }
  fmt::print("{:<40} {:>10} {:>12} {:>8}\n", "forward", "ms", "tokens/s", "vs qad");
  fmt::print("{:<40} {:>10.1f} {:>12.0f} {:>8}\n", "qad", fwd_ms, tokens / (fwd_ms / 1e3), "1.000x");

  // --- QAD step
  double step_ms = 0, peak_gb = 0;
  try {
    auto teacher = qad::bench::random_cuda_model(config, 1);
    teacher->eval();
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
    qad::data::BatchTensors b;
    b.input_ids = ids;
    b.targets = torch::randint(0, config.vocab_size, {batch, seq}, ids.options());
    b.loss_mask = torch::ones({batch, seq}, torch::TensorOptions().dtype(torch::kFloat32).device(dev));
    b.attention_mask = torch::ones({batch, seq}, torch::TensorOptions().dtype(torch::kBool).device(dev));
    qad::train::TrainConfig cfg;
    cfg.loss.log_ce = false;
    auto student = qad::train::quantize_student(qad::bench::random_cuda_model(config, 1), cfg, [&](const qad::train::CalibSink& sink) {
      sink(b.input_ids, torch::Tensor());
    });
    student.lm->train();
    qad::train::AdamW opt(student.lm->hf_tensors(), cfg.optim);
    qad::train::reset_peak_memory(dev);
    step_ms = median_ms(warmup, iters, [&](int64_t it) {
      qad::train::train_step(student.lm, &teacher, {b}, opt,
                             {.lr = 1e-5, .config = &cfg, .rng_seed = static_cast<uint64_t>(it)});
    });
    peak_gb = qad::train::peak_memory_gb(dev);
    fmt::print("{:<40} {:>10.1f} {:>12.0f}   peak {:.1f} GB, {} NVFP4 Linears\n", "QAD step, qad (NVFP4 student)", step_ms,
               tokens / (step_ms / 1e3), peak_gb, student.quantized_modules.size());
  } catch (const std::exception& e) {
    fmt::print("QAD step, qad: failed ({}); try fewer --layers\n", std::string(e.what()).substr(0, 300));
  }

  if (!hf) return 0;
  const auto& text = hf_text;
  bool parsed = false;
  for (size_t at = 0; (at = text.find("{\"impl\"", at)) != std::string::npos; ++at) {
    try {
      auto j = nlohmann::json::parse(text.substr(at, text.find('\n', at) - at));
      const double ms = j["median_ms"].get<double>();
      const double ref = j["what"] == "forward" ? fwd_ms : step_ms;
      fmt::print("{:<40} {:>10.1f} {:>12.0f} {:>8}\n", j["label"].get<std::string>(), ms, tokens / (ms / 1e3),
                 ref > 0 ? fmt::format("{:.3f}x", ms / ref) : "-");
      parsed = true;
    } catch (...) {
    }
  }
  if (!parsed) fmt::print("transformers baseline failed (run tools/bench_moe_hf.py by hand):\n{}\n", text.substr(0, 2000));
  fmt::print("(vs qad > 1: qad is faster by that factor)\n");
  return 0;
}
