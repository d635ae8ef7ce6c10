// Fused-kernel benchmark at the shapes of a QAD step (Qwen3-0.6B and 1.7B, batch 4 x 2048 tokens, BF16). Per op,
// forward and backward: the fused kernel's time and bandwidth (bytes it must move / time) as a share of a
// device-to-device copy's bandwidth measured in the same run, and its speed-up over the unfused LibTorch op
// sequence it replaces (through autograd for the backward, both sides). Then one decoder layer's forward +
// backward with NVFP4 fake quantization, fused vs unfused. On a CPU: small shapes, the reference loops.
// Usage: bench_fused [tokens]. Figures go to docs/benchmarks.md with device and commit.
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "fused/autograd.h"
#include "fused/rms_norm.h"
#include "model/config.h"
#include "model/layers.h"
#include "nvfp4/fake_quantize_autograd.h"
#include "nvfp4/quantize.h"
#include "quant/linear_quant.h"
#include "timing.h"

namespace {

using qad::bench::time_ms;
using qad::fused::OutputQuant;

bool g_cuda = false;

torch::TensorOptions opts() {
  return torch::TensorOptions().dtype(torch::kBFloat16).device(g_cuda ? torch::kCUDA : torch::kCPU);
}

// One table row: fused time, its bandwidth as a share of the copy's, speed-up over the unfused sequence.
void row(const std::string& name, double bytes, double copy_gbps, const std::function<void()>& fused,
         const std::function<void()>& unfused) {
  const double f = time_ms(fused, g_cuda, 3, 20), u = time_ms(unfused, g_cuda, 3, 20);
  const double gbps = bytes / (f * 1e-3) / 1e9;
  fmt::print("{:<34} {:>9.3f} {:>9.1f} {:>8.0f}% {:>9.3f} {:>8.2f}x\n", name, f, gbps, 100.0 * gbps / copy_gbps, u,
             u / f);
}

torch::Tensor rms_norm_ops(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
  return w * h.to(x.scalar_type());
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// The gradient of `y` into `inputs` for the upstream gradient `g`, the graph kept for the next call.
void backward(const torch::Tensor& y, const torch::Tensor& g, const std::vector<torch::Tensor>& inputs) {
  torch::autograd::grad({y}, inputs, {g}, /*retain_graph=*/true);
}

struct Shape {
  const char* name;
  int64_t hidden, intermediate, heads, kv_heads, head_dim;
};

void op_table(const Shape& s, int64_t tokens, double copy_gbps) {
  const double eps = 1e-6, e = 2.0;  // bytes per BF16 element
  const int64_t n = tokens, k = s.hidden, m = s.intermediate;
  fmt::print("\n{} ({} tokens): {:<21} {:>9} {:>9} {:>9} {:>9} {:>9}\n", s.name, n, "op", "fused ms", "GB/s",
             "of copy", "unfused", "speed-up");
  auto x = torch::randn({n, k}, opts()), r = torch::randn({n, k}, opts());
  auto w = (1 + 0.1 * torch::randn({k}, opts())).detach();
  auto amax = torch::full({}, 6.0f, opts().dtype(torch::kFloat32));
  OutputQuant q{amax, false};
  auto fq = [&](const torch::Tensor& t) { return qad::nvfp4::fake_quantize_ste(t, amax); };

  row("rmsnorm+fq fwd", e * (2.0 * n * k), copy_gbps, [&] { qad::fused::rms_norm_forward(x, {}, w, eps, q); },
      [&] { fq(rms_norm_ops(x, w, eps)); });
  row("add+rmsnorm+fq fwd", e * (4.0 * n * k), copy_gbps, [&] { qad::fused::rms_norm_forward(x, r, w, eps, q); },
      [&] { fq(rms_norm_ops(x + r, w, eps)); });
  {
    auto xg = x.clone().requires_grad_(true), wg = w.clone().requires_grad_(true), gy = torch::randn_like(x);
    auto yf = qad::fused::rms_norm(xg, wg, eps, q), yu = fq(rms_norm_ops(xg, wg, eps));
    row("rmsnorm+fq bwd", e * (3.0 * n * k), copy_gbps, [&] { backward(yf, gy, {xg, wg}); },
        [&] { backward(yu, gy, {xg, wg}); });
  }
  auto g = torch::randn({n, m}, opts()), u = torch::randn({n, m}, opts());
  row("swiglu+fq fwd", e * (3.0 * n * m), copy_gbps, [&] { qad::fused::swiglu(g, u, q); },
      [&] { fq(torch::silu(g) * u); });
  {
    auto gg = g.clone().requires_grad_(true), ug = u.clone().requires_grad_(true), gy = torch::randn_like(g);
    auto yf = qad::fused::swiglu(gg, ug, q), yu = fq(torch::silu(gg) * ug);
    row("swiglu+fq bwd", e * (5.0 * n * m), copy_gbps, [&] { backward(yf, gy, {gg, ug}); },
        [&] { backward(yu, gy, {gg, ug}); });
  }
  const int64_t b = 4, t = n / b, d = s.head_dim;
  auto qx = torch::randn({b, t, s.heads, d}, opts()), qw = (1 + 0.1 * torch::randn({d}, opts())).detach();
  auto angles = torch::rand({b, t, d / 2}, opts().dtype(torch::kFloat32)) * 100;
  auto cos = torch::cat({angles, angles}, -1).cos().to(torch::kBFloat16), sin = torch::cat({angles, angles}, -1).sin().to(torch::kBFloat16);
  auto rope_ops = [&](const torch::Tensor& xx, const torch::Tensor& ww) {
    auto mm = rms_norm_ops(xx, ww, eps).transpose(1, 2);
    return mm * cos.unsqueeze(1) + rotate_half(mm) * sin.unsqueeze(1);
  };
  const double rope_bytes = e * (2.0 * qx.numel() + 2.0 * cos.numel());
  row("q_norm+rope fwd", rope_bytes, copy_gbps, [&] { qad::fused::rope(qx, qw, eps, cos, sin); },
      [&] { rope_ops(qx, qw); });
  {
    auto xg = qx.clone().requires_grad_(true), wg = qw.clone().requires_grad_(true);
    auto yf = qad::fused::rope(xg, wg, eps, cos, sin), yu = rope_ops(xg, wg);
    auto gy = torch::randn_like(yf);
    row("q_norm+rope bwd", rope_bytes + e * qx.numel(), copy_gbps, [&] { backward(yf, gy, {xg, wg}); },
        [&] { backward(yu, gy, {xg, wg}); });
  }
}

// One decoder layer of the shape with NVFP4 hooks on every Linear (static input amaxes), forward + backward.
void layer_row(const Shape& s, int64_t tokens) {
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}}, {"vocab_size", 1024}, {"hidden_size", s.hidden},
                      {"intermediate_size", s.intermediate}, {"num_hidden_layers", 1},
                      {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kv_heads}, {"head_dim", s.head_dim},
                      {"rms_norm_eps", 1e-6}, {"max_position_embeddings", 40960}, {"tie_word_embeddings", true},
                      {"dtype", "bfloat16"}};
  auto c = qad::model::parse_config(j, "bench");
  qad::model::DecoderLayer layer(c, 0);
  {
    torch::NoGradGuard ng;
    for (auto& p : layer->parameters()) p.normal_(0, 0.02);
    for (auto& item : layer->named_parameters()) {  // LibTorch 1.13's OrderedDict items do not decompose
      if (item.key().find("norm") != std::string::npos) item.value().fill_(1.0);
    }
  }
  layer->to(opts().device(), torch::kBFloat16);
  for (auto* l : {&layer->self_attn->q_proj, &layer->self_attn->k_proj, &layer->self_attn->v_proj,
                  &layer->self_attn->o_proj, &layer->mlp->gate_proj, &layer->mlp->up_proj, &layer->mlp->down_proj}) {
    auto h = std::make_shared<qad::quant::NvFp4LinearQuant>((*l)->name());
    h->input_amax = torch::full({}, 8.0f);
    h->weight_amax = qad::nvfp4::compute_amax((*l)->weight.detach()).cpu();
    (*l)->quant = h;
  }
  const int64_t b = 4, t = tokens / b;
  auto x = (torch::randn({b, t, s.hidden}, opts())).requires_grad_(true);
  auto pos = torch::arange(t, opts().dtype(torch::kFloat32)).unsqueeze(-1) *
             qad::model::rope_inv_freq(c).to(opts().device());
  auto angles = torch::cat({pos, pos}, -1).unsqueeze(0).expand({b, t, s.head_dim}).contiguous();
  qad::model::AttentionContext ctx;
  ctx.cos = angles.cos().to(torch::kBFloat16);
  ctx.sin = angles.sin().to(torch::kBFloat16);
  auto gy = torch::randn({b, t, s.hidden}, opts());
  std::vector<torch::Tensor> inputs = {x};  // the input and every weight, as a training step differentiates
  for (auto& p : layer->parameters()) inputs.push_back(p);
  auto step = [&](bool fused) {
    ctx.fused = fused ? qad::model::FusedKernels::kAuto : qad::model::FusedKernels::kOff;
    auto y = layer->forward(x, ctx);
    torch::autograd::grad({y}, inputs, {gy});
  };
  const double f = time_ms([&] { step(true); }, g_cuda, 2, 10), u = time_ms([&] { step(false); }, g_cuda, 2, 10);
  fmt::print("{:<34} {:>9.3f} {:>9} {:>9} {:>9.3f} {:>8.2f}x\n", "decoder layer fwd+bwd (W4A4 fq)", f, "", "", u, u / f);
}

}  // namespace

int main(int argc, char** argv) {
  g_cuda = torch::cuda::is_available() && qad::nvfp4::has_cuda_kernels();
  int64_t tokens = g_cuda ? 8192 : 256;
  if (argc > 1) tokens = std::atoll(argv[1]);
  fmt::print("Fused kernels vs unfused LibTorch ops on {}, BF16, median times (ms)\n", g_cuda ? "CUDA" : "CPU");
  auto big = torch::empty({tokens * 2048 * 4}, opts());
  auto big2 = torch::empty_like(big);
  const double copy_ms = time_ms([&] { big2.copy_(big); }, g_cuda, 3, 20);
  const double copy_gbps = 2.0 * big.numel() * 2 / (copy_ms * 1e-3) / 1e9;
  fmt::print("device copy: {:.1f} GB/s (read + write of {} MiB)\n", copy_gbps, big.numel() * 2 >> 20);
  big = big2 = torch::Tensor();
  for (const Shape& s : {Shape{"Qwen3-0.6B", 1024, 3072, 16, 8, 128}, Shape{"Qwen3-1.7B", 2048, 6144, 16, 8, 128}}) {
    if (!g_cuda && s.hidden > 1024) continue;
    op_table(s, tokens, copy_gbps);
    layer_row(s, tokens);
  }
  fmt::print("\nGB/s: bytes the fused kernel must move / its time; 'of copy': share of the copy's bandwidth;\n"
             "speed-up: unfused sequence time / fused time (backward rows time autograd's grad on both sides).\n");
  return 0;
}
