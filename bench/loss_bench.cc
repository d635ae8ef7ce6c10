// Loss benchmark. (1) The CKA term of one layer, forward + backward, biased/debiased, all tokens and a 4096-token
// subsample, against one BF16 [n,p] x [p,p] matmul measured in the same run, and the step overhead that implies
// for a Qwen3-0.6B-shaped decoder layer. (2) Chunked KL forward + backward against the naive version (FP32
// log-softmax of the whole [tokens, vocab] logits, autograd). Prints a table; figures go to docs/benchmarks.md.
//   bench_loss [tokens] [hidden] [vocab]
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "loss/cka_loss.h"
#include "loss/logit_losses.h"
#include "timing.h"

using qad::bench::time_ms;

int main(int argc, char** argv) {
  using namespace qad::loss;
  const bool cuda = torch::cuda::is_available();
  const auto dev = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : (cuda ? 16384 : 2048);
  const int64_t hidden = argc > 2 ? std::atoll(argv[2]) : (cuda ? 1024 : 256);
  const int64_t vocab = argc > 3 ? std::atoll(argv[3]) : (cuda ? 151936 : 32000);
  const int iters = cuda ? 20 : 3;
  auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(dev);
  torch::manual_seed(1);

  fmt::print("CKA loss on {}: {} tokens x hidden {} (one layer, BF16 hidden states, median of {})\n",
             cuda ? "CUDA" : "CPU", tokens, hidden, iters);
  auto x = torch::randn({1, tokens, hidden}, bf16);
  auto w = torch::randn({hidden, hidden}, bf16) * 0.05;
  auto y = (x + torch::randn({1, tokens, hidden}, bf16) * 0.3).requires_grad_(true);
  auto x2 = x.reshape({tokens, hidden});
  const double mm = time_ms([&] { auto r = x2.mm(w); }, cuda, 3, iters);
  // A Qwen3-0.6B-shaped decoder layer (q 2p, k p, v p, o 2p, gate 3p, up 3p, down 3p; p = 1024) costs ~15 [n,p]x[p,p]
  // matmuls forward; teacher forward + student forward and backward ~ 60 per layer per step (attention and lm_head
  // not counted, which makes the estimate an upper bound of the overhead).
  const double layer_step = 60.0 * mm;
  fmt::print("{:<34} {:>10} {:>14} {:>16}\n", "op", "ms", "x BF16 matmul", "est. step share");
  fmt::print("{:<34} {:>10.3f} {:>14} {:>16}\n", "bf16 [n,p]x[p,p] matmul (baseline)", mm, "1.00", "");
  std::vector<std::pair<std::string, torch::Tensor>> th{{"l", x}}, sh{{"l", y}};
  for (auto est : {CkaEstimator::kBiased, CkaEstimator::kDebiased}) {
    for (int64_t sub : {int64_t{0}, int64_t{4096}}) {
      if (sub >= tokens) continue;
      CkaLossOptions o;
      o.estimator = est;
      o.subsample_tokens = sub;
      auto gen = torch::make_generator<at::CPUGeneratorImpl>(3);
      const double t = time_ms(
          [&] {
            auto r = cka_loss(th, sh, {}, o, &gen);
            r.loss.backward();
            y.mutable_grad() = torch::Tensor();
          },
          cuda, 2, iters);
      auto label = fmt::format("cka {} fwd+bwd{}", est == CkaEstimator::kBiased ? "biased" : "debiased",
                               sub ? fmt::format(" (sub {})", sub) : std::string());
      fmt::print("{:<34} {:>10.3f} {:>14.2f} {:>15.2f}%\n", label, t, t / mm, 100.0 * t / layer_step);
    }
  }

  const int64_t kl_tokens = cuda ? 8192 : 512;
  fmt::print("\nKL(teacher || student) on {}: {} tokens x vocab {} (BF16 logits, fwd+bwd)\n", cuda ? "CUDA" : "CPU",
             kl_tokens, vocab);
  auto s = torch::randn({1, kl_tokens, vocab}, bf16).requires_grad_(true);
  auto t = torch::randn({1, kl_tokens, vocab}, bf16);
  auto naive = [&] {
    auto log_ps = torch::log_softmax(s.to(torch::kFloat32), -1);
    auto log_pt = torch::log_softmax(t.to(torch::kFloat32), -1);
    auto loss = torch::kl_div(log_ps, log_pt, at::Reduction::Sum, /*log_target=*/true) / kl_tokens;
    loss.backward();
    s.mutable_grad() = torch::Tensor();
  };
  const double naive_ms = time_ms(naive, cuda, 1, iters);
  const double fp32_bytes = 4.0 * kl_tokens * vocab;
  fmt::print("{:<34} {:>10} {:>8} {:>22}\n", "op", "ms", "ratio", "FP32 transient (GiB)");
  fmt::print("{:<34} {:>10.3f} {:>8} {:>22.2f}\n", "naive fp32 (baseline)", naive_ms, "1.00", 4 * fp32_bytes / (1 << 30));
  for (int64_t chunk : {int64_t{1024}, int64_t{4096}}) {
    for (int64_t k : {int64_t{0}, int64_t{1024}}) {
      KLOptions o;
      o.chunk_tokens = chunk;
      o.top_k = k;
      const double ms = time_ms(
          [&] {
            kl_divergence(s, t, {}, o).backward();
            s.mutable_grad() = torch::Tensor();
          },
          cuda, 1, iters);
      const double width = k ? static_cast<double>(k) : static_cast<double>(vocab);
      fmt::print("{:<34} {:>10.3f} {:>8.2f} {:>22.2f}\n",
                 fmt::format("chunked {}{}", chunk, k ? fmt::format(" top-{}", k) : std::string()), ms, ms / naive_ms,
                 3.0 * 4.0 * std::min(chunk, kl_tokens) * width / (1 << 30));
    }
  }
  return 0;
}
