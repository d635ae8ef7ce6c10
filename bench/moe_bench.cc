// MoE models cut to --layers blocks so that the QAD step fits one H200 (teacher BF16 + student BF16 + FP32 master
// and two AdamW moments + gradients ~ 18 bytes per parameter), random BF16 weights:
//   qwen3-30b-a3b (default): Qwen3-30B-A3B, 128 experts top-8, expert width 768, hidden 2048 (0.62B parameters
//     per layer; 6 layers + embeddings ~ 80 GB plus activations);
//   nemotron-3-nano: Nemotron 3 Nano 30B-A3B (NemotronH): the first --layers blocks of its pattern
//     MEMEM*EMEMEM*... (Mamba-2, MoE with 128 relu2 experts top-6 + a shared expert, attention), hidden 2688
//     (1.28B parameters per MoE block; 6 blocks = MEMEM* ~ 3.4B parameters, ~ 62 GB plus activations).
//   1. forward tokens/s (inference mode, all logits) against transformers' Qwen3MoeForCausalLM /
//      NemotronHForCausalLM (sdpa attention, its eager expert loop, and its default experts kernel where that
//      differs; NemotronH's Mamba mixer on its torch path, as mamba_ssm is not installed), measured in the same run
//      by tools/bench_moe_hf.py;
//   2. the QAD step (teacher forward + NVFP4 student forward/backward + AdamW) against transformers doing the
//      same step without fake quantization (a lower bound on its cost: qad quantizes every expert on top).
//   ./build/bench_moe [--shape qwen3-30b-a3b|nemotron-3-nano] [--layers 6] [--batch 4] [--seq 2048] [--iters 5]
//                     [--no-hf] [--python python3]  (repo root)
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>
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

// Nemotron 3 Nano 30B-A3B (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16's config.json) cut to its first `layers` blocks.
nlohmann::json nemotron_3_nano(int64_t layers) {
  const std::string pattern = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME";
  if (layers < 1 || layers > static_cast<int64_t>(pattern.size())) {
    throw std::runtime_error(fmt::format("--layers must be in [1, {}] for nemotron-3-nano", pattern.size()));
  }
  return {{"architectures", {"NemotronHForCausalLM"}}, {"model_type", "nemotron_h"}, {"vocab_size", 131072},
          {"hidden_size", 2688}, {"hybrid_override_pattern", pattern.substr(0, static_cast<size_t>(layers))},
          {"num_hidden_layers", layers}, {"num_attention_heads", 32}, {"num_key_value_heads", 2}, {"head_dim", 128},
          {"intermediate_size", 1856}, {"mlp_hidden_act", "relu2"}, {"mamba_num_heads", 64},
          {"mamba_head_dim", 64}, {"ssm_state_size", 128}, {"n_groups", 8}, {"conv_kernel", 4},
          {"chunk_size", 128}, {"expand", 2}, {"use_conv_bias", true}, {"mamba_proj_bias", false},
          {"mamba_hidden_act", "silu"}, {"layer_norm_epsilon", 1e-5}, {"n_routed_experts", 128},
          {"num_experts_per_tok", 6}, {"moe_intermediate_size", 1856},
          {"moe_shared_expert_intermediate_size", 3712}, {"n_shared_experts", 1}, {"n_group", 1},
          {"topk_group", 1}, {"routed_scaling_factor", 2.5}, {"norm_topk_prob", true},
          {"max_position_embeddings", 262144}, {"tie_word_embeddings", false}, {"attention_bias", false},
          {"mlp_bias", false}, {"torch_dtype", "bfloat16"}};
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
  std::string python = "python3", shape = "qwen3-30b-a3b";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--shape") shape = next();
    else if (a == "--layers") layers = std::stoll(next());
    else if (a == "--batch") batch = std::stoll(next());
    else if (a == "--seq") seq = std::stoll(next());
    else if (a == "--iters") iters = std::stoll(next());
    else if (a == "--no-hf") hf = false;
    else if (a == "--python") python = next();
    else {
      fmt::print(stderr, "usage: bench_moe [--shape qwen3-30b-a3b|nemotron-3-nano] [--layers N] [--batch N] [--seq T] [--iters K] [--no-hf] [--python PY]\n");
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    fmt::print("bench_moe: no CUDA device; this benchmark is for the GPU machine\n");
    return 0;
  }
  const torch::Device dev(torch::kCUDA, 0);
  const bool nemotron = shape == "nemotron-3-nano";
  if (!nemotron && shape != "qwen3-30b-a3b") {
    fmt::print(stderr, "bench_moe: unknown --shape {} (qwen3-30b-a3b, nemotron-3-nano)\n", shape);
    return 2;
  }
  const auto json = nemotron ? nemotron_3_nano(layers) : qwen3_30b_a3b(layers);
  auto config = qad::model::parse_config(json, shape + " shape");
  const double tokens = static_cast<double>(batch * seq);
  auto ids = torch::randint(0, config.vocab_size, {batch, seq}, torch::TensorOptions().device(dev).dtype(torch::kLong));
  if (nemotron) {
    fmt::print("bench_moe: Nemotron 3 Nano 30B-A3B shape, blocks {} (first {} of 52), 128 experts top-6 + shared, "
               "batch {} x {} tokens, BF16\n", json["hybrid_override_pattern"].get<std::string>(), layers, batch, seq);
  } else {
    fmt::print("bench_moe: Qwen3-30B-A3B shape, {} of 48 layers, 128 experts top-8, batch {} x {} tokens, BF16\n",
               layers, batch, seq);
  }

  // transformers first, in its own process, before this one's caching allocator holds most of the GPU.
  std::string hf_text;
  if (hf) {
    hf_text = qad::bench::run_capture(fmt::format(
        "{} tools/bench_moe_hf.py --shape {} --layers {} --batch {} --seq {} --iters {} --json 2>&1", python, shape,
        layers, batch, seq, iters));
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
    b.host = qad::data::read_host_facts(b);  // as to_tensors gives the trainer's batches: no device read per step
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
  // A measurement the baseline could not make (e.g. its QAD step out of memory) is reported, not dropped.
  for (size_t at = 0; at < text.size();) {
    const size_t end = std::min(text.find('\n', at), text.size());
    const auto line = text.substr(at, end - at);
    if (parsed && line.rfind("{\"impl\"", 0) != 0 &&
        (line.find("out of memory") != std::string::npos || line.find("failed") != std::string::npos ||
         line.find("Error") != std::string::npos)) {
      fmt::print("transformers: {}\n", line.substr(0, 400));
    }
    at = end + 1;
  }
  fmt::print("(vs qad > 1: qad is faster by that factor)\n");
  return 0;
}
