// Forward throughput of the qad decoder on a Qwen3-0.6B-shaped model (random weights, BF16, fused SDPA)
// at batch x seq tokens, against transformers (sdpa) measured in the same run by running
// tools/bench_forward_hf.py. Prints tokens/s, ratio, and MFU two ways: 2 * matmul params * tokens, and
// that plus causal attention FLOPs, over the H100 SXM dense BF16 peak (989 TFLOP/s).
//   ./build/bench/bench_model [--batch 8] [--seq 2048] [--iters 10] [--no-hf] [--python python3]   (repo root)
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_common.h"
#include "model/causal_lm.h"

namespace {

constexpr double kPeakBf16Flops = 989e12;  // H100 SXM, dense BF16

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 8, seq = 2048, iters = 10, warmup = 3;
  bool hf = true;
  std::string python = "python3";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--batch") batch = std::stoll(next());
    else if (a == "--seq") seq = std::stoll(next());
    else if (a == "--iters") iters = std::stoll(next());
    else if (a == "--no-hf") hf = false;
    else if (a == "--python") python = next();
    else {
      fmt::print(stderr, "usage: bench_model [--batch N] [--seq T] [--iters K] [--no-hf] [--python PY]\n");
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    fmt::print("bench_model: no CUDA device; this benchmark is for the GPU machine\n");
    return 0;
  }
  auto config = qad::model::parse_config(qad::bench::qwen3_shape("0.6b"), "Qwen3-0.6B shape");
  auto lm = qad::bench::random_cuda_model(config, 0);
  torch::NoGradGuard no_grad;
  lm->eval();
  double matmul_params = 0;
  for (const auto& l : lm->linears()) matmul_params += static_cast<double>(l->weight.numel());
  const double tokens = static_cast<double>(batch * seq);
  // Causal attention: QK^T and PV, 2 FLOPs per MAC, half the T x T square.
  const double attn_flops = 2.0 * 2.0 * static_cast<double>(config.num_layers) * batch * seq * seq *
                            config.num_heads * config.head_dim / 2.0;
  auto ids = torch::randint(0, config.vocab_size, {batch, seq}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kLong));
  std::vector<double> ms;
  c10::InferenceMode inference;  // as the baseline's torch.inference_mode()
  for (int64_t i = 0; i < warmup + iters; ++i) {
    torch::cuda::synchronize();
    auto t0 = std::chrono::steady_clock::now();
    auto out = lm->forward(ids);
    torch::cuda::synchronize();
    if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double qad_ms = ms[ms.size() / 2];
  const double qad_tps = tokens / (qad_ms / 1e3);
  auto mfu = [&](double sec, bool with_attn) {
    return (2.0 * matmul_params * tokens + (with_attn ? attn_flops : 0.0)) / sec / kPeakBf16Flops * 100.0;
  };
  fmt::print("Qwen3-0.6B-shaped forward, BF16, batch {} x {} tokens, {:.0f}M matmul params, median of {}\n", batch, seq,
             matmul_params / 1e6, iters);
  fmt::print("{:<14} {:>10} {:>12} {:>9} {:>14} {:>8}\n", "impl", "ms", "tokens/s", "MFU %", "MFU+attn %", "vs HF");
  double hf_tps = 0, hf_ms = 0;
  std::string hf_version;
  if (hf) {
    auto text = qad::bench::run_capture(fmt::format("{} tools/bench_forward_hf.py --batch {} --seq {} --iters {} --json 2>/dev/null",
                                        python, batch, seq, iters));
    auto line = text.substr(text.rfind('{') == std::string::npos ? 0 : text.rfind('{'));
    try {
      auto j = nlohmann::json::parse(line);
      hf_tps = j["tokens_per_s"].get<double>();
      hf_ms = j["median_ms"].get<double>();
      hf_version = j["version"].get<std::string>();
    } catch (...) {
      fmt::print("transformers baseline failed to run (run tools/bench_forward_hf.py by hand): {}\n", text);
    }
  }
  fmt::print("{:<14} {:>10.1f} {:>12.0f} {:>9.1f} {:>14.1f} {:>8}\n", "qad", qad_ms, qad_tps, mfu(qad_ms / 1e3, false),
             mfu(qad_ms / 1e3, true), hf_tps > 0 ? fmt::format("{:.3f}x", qad_tps / hf_tps) : "-");
  if (hf_tps > 0) {
    fmt::print("{:<14} {:>10.1f} {:>12.0f} {:>9.1f} {:>14.1f} {:>8}\n", "transformers", hf_ms, hf_tps,
               mfu(hf_ms / 1e3, false), mfu(hf_ms / 1e3, true), "1.000x");
    fmt::print("transformers {} sdpa; device {}\n", hf_version, torch::cuda::device_count() > 0 ? "cuda:0" : "?");
  }
  return 0;
}
