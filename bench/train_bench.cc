// One QAD training step (BF16 teacher forward + NVFP4 fake-quantized student forward/backward + chunked KL +
// AdamW with FP32 master weights) on Qwen3-0.6B- and 1.7B-shaped random models: tokens/s and MFU; then the same
// step with the CKA term in several settings (all tokens FP32, TF32, token subsampling) as ratios of step time
// and peak memory against QAD measured in the same run (goals: <= 1.01x time, <= 1.03x memory).
//   ./build/bench_train [--models 0.6b,1.7b] [--batch 4] [--seq 2048] [--iters 8] [--warmup 3] [--ckpt]
// MFU: 6 * (student matmul params) * tokens + 2 * (teacher matmul params) * tokens, plus causal attention
// (x3 for the student's forward+backward, x1 for the teacher), over the H100 SXM dense BF16 peak (989 TFLOP/s).
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/batch_tensors.h"
#include "model/causal_lm.h"
#include "train/memory.h"
#include "train/optimizer.h"
#include "train/step.h"
#include "train/student.h"
#include "util/torch_compat.h"

namespace {

constexpr double kPeakBf16Flops = 989e12;

nlohmann::json qwen3_shape(const std::string& name) {
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}}, {"vocab_size", 151936}, {"head_dim", 128},
                      {"max_position_embeddings", 40960}, {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true},
                      {"hidden_act", "silu"}, {"rope_theta", 1000000.0}, {"torch_dtype", "bfloat16"},
                      {"num_key_value_heads", 8}};
  if (name == "0.6b") {
    j.update({{"hidden_size", 1024}, {"intermediate_size", 3072}, {"num_hidden_layers", 28}, {"num_attention_heads", 16}});
  } else if (name == "1.7b") {
    j.update({{"hidden_size", 2048}, {"intermediate_size", 6144}, {"num_hidden_layers", 28}, {"num_attention_heads", 16}});
  } else {
    throw std::runtime_error("unknown model shape " + name + " (0.6b, 1.7b)");
  }
  return j;
}

qad::model::CausalLM random_model(const qad::model::ModelConfig& c, uint64_t seed) {
  qad::model::CausalLM lm(c);
  lm->to(torch::kCUDA, torch::kBFloat16);
  torch::manual_seed(seed);
  torch::NoGradGuard ng;
  for (auto& [name, p] : lm->hf_tensors()) {
    auto t = p;
    if (name.find("norm") != std::string::npos) t.fill_(1.0);
    else t.normal_(0.0, 0.02);
  }
  return lm;
}

struct Measured {
  double ms = 0, peak_gb = 0;
};

struct Variant {
  std::string label;
  double cka = 0;
  int64_t subsample = 0;
  bool tf32 = false;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> models = {"0.6b", "1.7b"};
  int64_t batch = 4, seq = 2048, iters = 8, warmup = 3;
  bool ckpt = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--models") {
      models.clear();
      std::string s = next();
      for (size_t b = 0; b < s.size();) {
        size_t e = s.find(',', b);
        if (e == std::string::npos) e = s.size();
        models.push_back(s.substr(b, e - b));
        b = e + 1;
      }
    } else if (a == "--batch") batch = std::stoll(next());
    else if (a == "--seq") seq = std::stoll(next());
    else if (a == "--iters") iters = std::stoll(next());
    else if (a == "--warmup") warmup = std::stoll(next());
    else if (a == "--ckpt") ckpt = true;
    else {
      fmt::print(stderr, "usage: bench_train [--models 0.6b,1.7b] [--batch N] [--seq T] [--iters K] [--warmup W] [--ckpt]\n");
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    fmt::print("bench_train: no CUDA device; this benchmark is for the GPU machine\n");
    return 0;
  }
  const torch::Device dev(torch::kCUDA, 0);
  const std::vector<Variant> variants = {
      {"QAD (baseline)", 0, 0, false},
      {"CKA-QAD all tokens, FP32", 0.1, 0, false},
      {"CKA-QAD all tokens, TF32", 0.1, 0, true},
      {"CKA-QAD 2048 tokens, TF32", 0.1, 2048, true},
      {"CKA-QAD 1024 tokens, TF32 (recipe)", 0.1, 1024, true},
      {"CKA-QAD 512 tokens, TF32", 0.1, 512, true},
  };
  fmt::print("bench_train: batch {} x seq {} = {} tokens/step, BF16 teacher + NVFP4 student, AdamW FP32 master{}\n",
             batch, seq, batch * seq, ckpt ? ", activation checkpointing" : "");
  for (const auto& name : models) {
    auto config = qad::model::parse_config(qwen3_shape(name), "Qwen3-" + name + " shape");
    auto teacher = random_model(config, 1);
    teacher->eval();
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(7);
    qad::data::BatchTensors b;
    b.input_ids = torch::randint(config.vocab_size, {batch, seq}, gen, torch::kLong).to(dev);
    b.targets = torch::randint(config.vocab_size, {batch, seq}, gen, torch::kLong).to(dev);
    b.loss_mask = torch::ones({batch, seq}, torch::TensorOptions().dtype(torch::kFloat32).device(dev));
    b.attention_mask = torch::ones({batch, seq}, torch::TensorOptions().dtype(torch::kBool).device(dev));

    qad::train::TrainConfig cfg;
    cfg.run.activation_checkpointing = ckpt;
    cfg.loss.log_ce = false;
    cfg.quant.calib_batches = 1;
    cfg.data.batch_size = batch;
    auto student_lm = random_model(config, 1);  // the teacher's weights
    auto student = qad::train::quantize_student(student_lm, cfg, [&](const qad::train::CalibSink& sink) {
      sink(b.input_ids, torch::Tensor());
    });
    student.lm->train();
    qad::train::AdamW opt(student.lm->hf_tensors(), cfg.optim);
    double matmul_params = 0;
    for (const auto& l : student.lm->linears()) matmul_params += static_cast<double>(l->weight.numel());
    const double tokens = static_cast<double>(batch * seq);
    const double attn_fwd = 2.0 * 2.0 * static_cast<double>(config.num_layers) * tokens * static_cast<double>(seq) *
                            static_cast<double>(config.num_heads * config.head_dim) / 2.0;
    const double flops = 6.0 * matmul_params * tokens + 3.0 * attn_fwd + 2.0 * matmul_params * tokens + attn_fwd;

    fmt::print("\nQwen3-{} shape: {:.0f}M matmul params, {} layers, hidden {}; {} NVFP4 Linears\n", name,
               matmul_params / 1e6, config.num_layers, config.hidden_size, student.quantized_modules.size());
    fmt::print("{:<36} {:>9} {:>10} {:>7} {:>9} {:>8} {:>8}\n", "variant", "ms/step", "tokens/s", "MFU", "peak GB",
               "time x", "mem x");
    Measured base;
    for (const auto& v : variants) {
      cfg.loss.kl = 1;
      cfg.loss.cka = v.cka;
      cfg.loss.cka_subsample_tokens = v.subsample;
      qad::compat::set_tf32_matmul(v.tf32);
      std::vector<double> ms;
      try {
        for (int64_t it = 0; it < warmup + iters; ++it) {
          if (it == warmup) {
            torch::cuda::synchronize();
            qad::train::reset_peak_memory(dev);
          }
          torch::cuda::synchronize();
          const auto t0 = std::chrono::steady_clock::now();
          qad::train::train_step(student.lm, &teacher, {b}, opt,
                                 {.lr = 1e-5, .config = &cfg, .rng_seed = static_cast<uint64_t>(it)});
          torch::cuda::synchronize();
          if (it >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
      } catch (const std::exception& e) {
        fmt::print("{:<36} failed: {}\n", v.label, std::string(e.what()).substr(0, 200));
        continue;
      }
      std::sort(ms.begin(), ms.end());
      Measured m{ms[ms.size() / 2], qad::train::peak_memory_gb(dev)};
      if (v.cka == 0) base = m;
      fmt::print("{:<36} {:>9.1f} {:>10.0f} {:>6.1f}% {:>9.2f} {:>7.3f}x {:>7.3f}x\n", v.label, m.ms,
                 tokens / (m.ms / 1e3), 100.0 * flops / (m.ms / 1e3) / kPeakBf16Flops, m.peak_gb, m.ms / base.ms,
                 m.peak_gb / base.peak_gb);
    }
    qad::compat::set_tf32_matmul(false);
  }
  return 0;
}
