// The memory plan (see memory_plan.h). Every formula names what it counts; activations count what autograd saves
// per token of a micro-batch, in BF16 elements (2 bytes), for the fused CUDA path (src/fused: the norms save their
// input, the q/k norm + RoPE kernel its input, SDPA q, k, v and its output, every quantized Linear its fake-quantized
// input, SwiGLU gate and up).
#include "train/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "checkpoint/load.h"
#include "model/device.h"
#include "model/device_memory.h"
#include "model/param_count.h"
#include "train/host_buffer.h"
#include "util/error.h"
#include "util/torch_compat.h"
#include "train/offload_adamw.h"
#include "train/student.h"
#include "train/teacher_cache.h"

namespace qad::train {
namespace {

using model::BlockType;
using model::ModelConfig;

constexpr double kBf16 = 2, kF32 = 4;

// BF16 elements autograd keeps per token for one layer of the student (forward, fused kernels, no checkpointing).
double layer_units(const ModelConfig& c, int64_t layer, bool* rough) {
  const double h = static_cast<double>(c.hidden_size), q = static_cast<double>(c.q_size()),
               kv = static_cast<double>(c.kv_size()), i = static_cast<double>(c.intermediate_size);
  // Attention half of a decoder layer: the norm's input x and its (quantized) output; q and k before the q/k-norm +
  // RoPE kernel and after it, v, SDPA's output, o_proj's quantized input; the residual h before the second norm.
  const double attention = 3 * h + 4 * q + 3 * kv;
  if (c.hybrid) {
    *rough = true;
    const auto& hy = *c.hybrid;
    const double norm = 3 * h;  // RMSNorm in tensor ops: its FP32 input copy (2 units) and the BF16 output
    switch (hy.blocks.at(static_cast<size_t>(layer))) {
      case BlockType::kAttention:
        return norm + 3 * h + 3 * q + 2 * kv;  // q/k/v's own quantized inputs, q k v, SDPA out, o_proj input
      case BlockType::kMlp:
        return norm + h + 3 * i;  // up's input, up's output, relu's output, down's quantized input
      case BlockType::kMamba: {
        const auto& m = hy.mamba;
        const double inner = static_cast<double>(m.inner()), conv = static_cast<double>(m.conv_dim());
        // in_proj's input and output, the convolution's input and output, the chunked scan's FP32 work (two
        // [heads, chunk] decay matrices per token and its inner-sized states), the gated norm (FP32), out_proj's input
        return norm + h + static_cast<double>(m.in_proj_size()) + 2 * conv +
               2 * 2 * static_cast<double>(m.num_heads * m.chunk_size) + 3 * 2 * inner + 3 * 2 * inner + inner;
      }
      case BlockType::kMoe: {
        const auto& m = *hy.moe;
        const double k = static_cast<double>(m.top_k), ie = static_cast<double>(m.intermediate_size),
                     is = static_cast<double>(m.shared_intermediate_size), e = static_cast<double>(m.num_experts);
        // per routed row: up's quantized input, up's output, relu's, down's input, the FP32 output row; the FP32
        // router; the shared expert
        return norm + k * (h + 3 * ie + 2 * h) + 2 * 2 * e + (h + 3 * is);
      }
    }
  }
  if (c.is_moe_layer(layer)) {
    *rough = true;
    const auto& m = *c.moe;
    const double k = static_cast<double>(m.top_k), ie = static_cast<double>(m.intermediate_size),
                 e = static_cast<double>(m.num_experts);
    // the norm's unquantized output; per routed row: gate's and up's quantized inputs, gate's output, silu's, up's,
    // down's quantized input, the expert output row the routing weight multiplies; router logits and probabilities
    return attention + h + k * (3 * h + 4 * ie) + 3 * e;
  }
  // The dense MLP: its quantized input, gate and up (SwiGLU's backward), down_proj's quantized input.
  return attention + h + 3 * i;
}

bool fused_head(const ModelConfig& c, const TrainConfig& cfg) {
  (void)c;
  if (cfg.loss.fused_head == 0 || !cfg.run.teacher_cache.empty()) return false;
  return !(cfg.loss.kl > 0 && cfg.loss.top_k > 0);  // the top-k KL keeps the logits path
}

double gb(double bytes) { return bytes / 1e9; }

// A teacher model in memory: not for pretraining, nor when its targets come from a teacher cache.
bool has_teacher(const TrainConfig& cfg) { return cfg.method != Method::kPretrain && cfg.run.teacher_cache.empty(); }

// The NVFP4 hooks' cached weights by default: every Linear's but the untied lm_head's and the routers'.
int64_t default_quantized_elements(const ModelConfig& c, const model::ParamCount& n) {
  return std::max<int64_t>(0, n.linear_weights - n.routers - (c.tie_word_embeddings ? 0 : c.vocab_size * c.hidden_size));
}

// --zero 3 (train/fully_sharded.h, docs/dist.md "Fully sharded training"): each model's decoder layers are kept as
// 1/world shards and gathered one layer at a time; the root unit (embeddings, final norm, lm_head) stays whole.
// In the backward up to three student layers are gathered at once (the one whose gradients are being reduced, the
// one computing, the prefetched one) and up to three layers' BF16 gradients exist (the .grad of the layer being
// reduced, its flat buffer, the previous flat buffer still in flight); the root's gradient is reduced at the end of
// the backward through a root-sized flat buffer. Without activation checkpointing autograd keeps every gathered
// student layer (and its fake-quantized copy) until its backward. Loading holds both models whole before they are
// sharded, and validation, checkpoints and exports gather the whole student.
template <typename Row>
void plan_fully_sharded(const ModelConfig& c, const TrainConfig& cfg, const model::ParamCount& n, int world, Row&& row) {
  const double total = static_cast<double>(n.total), h = static_cast<double>(c.hidden_size),
               v = static_cast<double>(c.vocab_size), layers = static_cast<double>(c.num_layers);
  const double root = v * h * (c.tie_word_embeddings ? 1 : 2) + h;
  const double per_layer = (total - root) / layers;
  const double sharded = kBf16 * ((total - root) / world + root);
  const std::string w = fmt::format("1/{}", world);
  if (has_teacher(cfg)) {
    row(fmt::format("teacher weights (BF16; layers {}, root whole)", w), sharded, 0, "always");
    row("teacher: 2 gathered layers (computing + prefetched)", 2 * kBf16 * per_layer, 0, "forward/backward");
  }
  row(fmt::format("student weights (BF16; layers {}, root whole)", w), sharded, 0, "always");
  const double quantized = method_quantizes(cfg.method)
                               ? static_cast<double>(default_quantized_elements(c, n)) / layers
                               : 0;  // per layer, about
  if (cfg.run.activation_checkpointing) {
    row("student: 3 gathered layers + their fake-quantized copies", 3 * kBf16 * (per_layer + quantized), 0,
        "forward/backward");
  } else {
    row("student: every layer gathered + fake-quantized, kept for the backward (no checkpointing)",
        kBf16 * layers * (per_layer + quantized), 0, "forward/backward");
  }
  const double trained = static_cast<double>(n.total - n.frozen);
  row(fmt::format("FP32 master + AdamW moments ({})", w), 3 * kF32 * trained / world, 0, "always");
  row(fmt::format("gradients (FP32 shard {}, root whole in BF16)", w), kF32 * trained / world + kBf16 * root, 0,
      "always");
  row("gradients in flight (3 layers': .grad, flat buffer, previous buffer)", 3 * kBf16 * per_layer, 0,
      "forward/backward");
  row("root gradient's reduce-scatter buffer", kBf16 * root, 0, "update");
  row(has_teacher(cfg) ? "loading: both models whole before sharding" : "loading: the student whole before sharding",
      kBf16 * total * (has_teacher(cfg) ? 2 : 1), 0, "start-up");
  row("validation, checkpoints, exports: the whole student gathered", kBf16 * total, 0, "whole student");
}

}  // namespace

MemoryPlan plan_memory(const ModelConfig& c, const TrainConfig& cfg, const PlanSettings& s) {
  MemoryPlan p;
  const auto n = model::count_parameters(c);
  const int64_t frozen = n.frozen + (cfg.optim.freeze_routers ? n.routers : 0);
  const double total = static_cast<double>(n.total), trained = static_cast<double>(n.total - frozen);
  p.parameters = n.total;
  p.trained = n.total - frozen;
  p.model = fmt::format("{}, {:.3f} B parameters ({:.3f} B trained)", c.architecture_name, total / 1e9, trained / 1e9);
  const int64_t tokens = cfg.data.batch_size * cfg.data.seq_len;
  p.tokens = tokens;
  const double t = static_cast<double>(tokens), h = static_cast<double>(c.hidden_size),
               v = static_cast<double>(c.vocab_size), layers = static_cast<double>(c.num_layers);
  const int world = std::max(1, s.world_size);
  const bool dp = world > 1, zero1 = dp && s.zero;
  const bool offload = cfg.optim.offload == "optimizer";
  auto row = [&](std::string what, double gpu, double host, std::string when) {
    p.rows.push_back({std::move(what), gpu, host, std::move(when)});
  };

  // Resident for the whole run.
  if (s.fully_sharded) {
    plan_fully_sharded(c, cfg, n, world, row);
  } else {
    if (has_teacher(cfg)) row("teacher weights (BF16)", kBf16 * total, 0, "always");
    row("student weights (BF16)", kBf16 * total, 0, "always");
    if (method_quantizes(cfg.method)) {
      int64_t q = s.quantized_weight_elements;
      if (q < 0) q = default_quantized_elements(c, n);
      row("fake-quantized weights (BF16, kept between steps)", kBf16 * static_cast<double>(q), 0, "always");
    }
    const double state = 3 * kF32 * trained;  // FP32 master + exp_avg + exp_avg_sq
    if (offload) {
      const OffloadAdamW::Staging st;
      const double chunk = std::min<double>(static_cast<double>(st.chunk_elements), trained);
      row("FP32 master + AdamW moments (offloaded)", 0, state, "always");
      row(fmt::format("offload staging ({} slots x {:.0f} Mi elements x 3 FP32)", st.slots, chunk / 1048576.0),
          st.slots * 3 * kF32 * chunk, 0, "always");
    } else if (zero1) {
      row(fmt::format("FP32 master + AdamW moments (ZeRO-1, 1/{})", world), state / world, 0, "always");
    } else {
      row("FP32 master + AdamW moments", state, 0, "always");
    }
    // Gradients: a permanent bucket buffer with data parallelism; else allocated by the backward and freed after the
    // update, so they meet the activations only when micro-batches accumulate.
    const bool grads_resident = dp || cfg.optim.grad_accum > 1;
    row(dp ? "gradients (BF16 bucket buffer)" : "gradients (BF16)", kBf16 * trained, 0,
        grads_resident ? "always" : "update");
  }

  // The forward/backward: saved activations, the loss head, the CKA rows.
  bool rough = false;
  double max_units = 0, sum_units = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const double u = layer_units(c, l, &rough);
    sum_units += u;
    max_units = std::max(max_units, u);
  }
  p.rough = rough;
  if (cfg.run.activation_checkpointing) {
    row(fmt::format("activations (checkpointed: {} layer inputs + one layer recomputed, {} tokens)", c.num_layers, tokens),
        kBf16 * t * (layers * h + max_units), 0, "forward/backward");
  } else {
    row(fmt::format("activations ({} layers x {} tokens{})", c.num_layers, tokens, rough ? ", rough for MoE/hybrid" : ""),
        kBf16 * t * sum_units, 0, "forward/backward");
  }
  if (fused_head(c, cfg)) {
    const double chunk = static_cast<double>(std::min<int64_t>({cfg.loss.chunk_tokens, 2048, tokens}));
    const double logits = (cfg.loss.kl > 0 ? 3 : 2) * chunk * v * kBf16;  // student (+ teacher) logits and their gradient
    // + the lm_head weight's gradient in FP32 and the hidden states' gradient, both kept for the backward
    row(fmt::format("loss head (fused lm_head + KL/CE, {:.0f}-token chunks)", chunk),
        logits + kF32 * v * h + kBf16 * t * h * (has_teacher(cfg) ? 2 : 1), 0, "forward/backward");
  } else {
    const double chunk = static_cast<double>(std::min<int64_t>(cfg.loss.chunk_tokens, tokens));
    // student logits (saved) and their gradient, the teacher's logits (live), FP32 chunks of the KL / CE
    row("loss head (logits path)", (cfg.loss.kl > 0 && has_teacher(cfg) ? 3 : 2) * t * v * kBf16 + 4 * chunk * v * kF32,
        0, "forward/backward");
  }
  if (!cfg.run.teacher_cache.empty()) {
    // Per token: k logits in the cache's value dtype, their ids as read (int32) and as the loss indexes them (int64),
    // and the teacher's logsumexp (FP32; the tail KL's)
    const double k = static_cast<double>(s.cache_top_k);
    row(fmt::format("teacher targets from the cache (top-{})", s.cache_top_k),
        t * k * (static_cast<double>(s.cache_value_bytes) + 4 + 8) + t * 4, 0, "forward/backward");
  }
  if (cfg.loss.cka > 0) {
    const double lc = cfg.loss.cka_layers.empty() ? layers : static_cast<double>(cfg.loss.cka_layers.size());
    const double nc = cfg.loss.cka_subsample_tokens > 0 ? std::min<double>(t, cfg.loss.cka_subsample_tokens) : t;
    // both models' rows (BF16), their centred FP32 features, the FP32 Gram matrices
    row(fmt::format("CKA rows ({:.0f} layers x {:.0f} tokens)", lc, nc),
        lc * nc * h * (2 * kBf16 + 2 * kF32) + 2 * lc * nc * nc * kF32, 0, "forward/backward");
  }

  for (const auto& r : p.rows) {
    p.host += r.host;
    if (r.when == "always") p.resident += r.gpu;
  }
  p.step_peak = p.update_peak = p.resident;
  for (const auto& r : p.rows) {
    if (r.when == "forward/backward") p.step_peak += r.gpu;
    if (r.when == "update") p.update_peak += r.gpu;
    if (r.when == "start-up") p.startup_peak += r.gpu;
    if (r.when == "whole student") p.whole_student_peak = p.resident + r.gpu;
  }
  p.peak = std::max({p.step_peak, p.update_peak, p.startup_peak, p.whole_student_peak});
  return p;
}

std::string format_plan(const MemoryPlan& p, const ModelConfig& c, const TrainConfig& cfg, const PlanSettings& s,
                        std::optional<double> device_bytes, std::optional<double> host_available) {
  std::string out = fmt::format("memory plan: {}; {} GPU{}{}, micro-batch {} x {} tokens, BF16 on CUDA{}\n", p.model,
                                s.world_size, s.world_size > 1 ? "s" : "",
                                s.fully_sharded ? " (fully sharded, --zero 3)"
                                : s.world_size > 1 ? (s.zero ? " (ZeRO-1)" : " (no ZeRO)") : "", cfg.data.batch_size,
                                cfg.data.seq_len,
                                cfg.run.teacher_cache.empty()
                                    ? std::string()
                                    : fmt::format(", teacher targets from the cache (top-{}), no teacher model",
                                                  s.cache_top_k));
  out += fmt::format("  {:<66} {:>10} {:>12}  {}\n", "component", "GB per GPU", "GB host", "held");
  for (const auto& r : p.rows) {
    out += fmt::format("  {:<66} {:>10.2f} {:>12}  {}\n", r.what, gb(r.gpu),
                       r.host > 0 ? fmt::format("{:.2f}", gb(r.host)) : std::string(""), r.when);
  }
  out += fmt::format("  peak of the forward/backward: {:.2f} GB; of the optimizer update: {:.2f} GB\n", gb(p.step_peak),
                     gb(p.update_peak));
  if (s.fully_sharded) {
    out += fmt::format("  peak of loading: {:.2f} GB; of validation / checkpoints / exports: {:.2f} GB\n",
                       gb(p.startup_peak), gb(p.whole_student_peak));
  }
  out += fmt::format("predicted peak per GPU: {:.2f} GB (the CUDA allocator's peak allocated bytes){}\n", gb(p.peak),
                     p.rough ? "; MoE / hybrid activations are a rough estimate" : "");
  if (cfg.optim.offload == "optimizer" && s.fully_sharded) {
    out += "note: the run refuses --offload optimizer with --zero 3; the plan shows the state sharded instead\n";
  } else if (cfg.optim.offload == "optimizer" && s.world_size > 1 && s.zero) {
    out += "note: the run refuses --offload optimizer with ZeRO-1; pass --zero 0 to offload every rank's state\n";
  }
  if (s.fully_sharded) {
    out += "note: the fully sharded rows are the formulas of docs/dist.md, not yet checked against a measured peak\n";
  }
  bool tight = false;
  if (device_bytes) {
    const double usable = (1 - kFragmentationShare) * *device_bytes - kDeviceReserveBytes;
    const bool fits = p.peak <= usable;
    tight = p.peak > 0.9 * usable;
    out += fmt::format("device: {:.2f} GB, usable {:.2f} GB after {:.1f} GB for the CUDA context and {:.0f}% for "
                       "fragmentation: {}\n", gb(*device_bytes), gb(usable), gb(kDeviceReserveBytes),
                       100 * kFragmentationShare,
                       fits ? fmt::format("FITS ({:.2f} GB to spare)", gb(usable - p.peak))
                            : fmt::format("DOES NOT FIT ({:.2f} GB short)", gb(p.peak - usable)));
  } else {
    out += "device: unknown (no CUDA device visible); pass --gpu-memory GB to check the fit\n";
  }
  if (p.host > 0) {
    out += fmt::format("host: {:.2f} GB page-locked per rank", gb(p.host));
    if (host_available) {
      const double need = p.host * s.world_size;
      out += fmt::format(", {:.2f} GB available: {}", gb(*host_available),
                         need < *host_available ? "fits" : "DOES NOT FIT (free host memory, or use ZeRO-1 on more GPUs)");
    }
    out += "\n";
  }
  if (!tight && device_bytes && p.peak <= (1 - kFragmentationShare) * *device_bytes - kDeviceReserveBytes) return out;
  // Suggestions: each change planned on its own.
  std::vector<std::string> ideas;
  auto try_change = [&](const std::string& what, TrainConfig changed, PlanSettings ss) {
    const auto q = plan_memory(c, changed, ss);
    if (q.peak < p.peak - 1e8) ideas.push_back(fmt::format("{}: {:.2f} GB (saves {:.2f} GB)", what, gb(q.peak), gb(p.peak - q.peak)));
  };
  if (cfg.optim.offload != "optimizer" && !(s.world_size > 1 && s.zero) && !s.fully_sharded) {
    auto x = cfg;
    x.optim.offload = "optimizer";
    try_change("--offload optimizer", x, s);
  }
  if (s.world_size > 1 && !s.zero) {
    auto ss = s;
    ss.zero = true;
    try_change("--zero 1", cfg, ss);
  }
  if (s.world_size > 1 && !s.fully_sharded && cfg.optim.offload != "optimizer") {
    auto ss = s;
    ss.zero = ss.fully_sharded = true;
    try_change("--zero 3", cfg, ss);
  }
  if (!cfg.run.activation_checkpointing) {
    auto x = cfg;
    x.run.activation_checkpointing = true;
    try_change("--activation-checkpointing", x, s);
  }
  if (cfg.data.batch_size > 1) {
    auto x = cfg;
    x.data.batch_size = (cfg.data.batch_size + 1) / 2;
    x.optim.grad_accum = cfg.optim.grad_accum * 2;
    try_change(fmt::format("--batch-size {} --grad-accum {} (the same tokens per step)", x.data.batch_size,
                           x.optim.grad_accum), x, s);
  }
  if (!ideas.empty()) {
    out += "to lower the peak:\n";
    for (const auto& i : ideas) out += "  " + i + "\n";
  }
  return out;
}

std::string plan_report(const TrainConfig& cfg, PlanSettings settings, std::optional<double> device_gb) {
  QAD_CHECK(!cfg.run.teacher.empty(), "--plan needs --teacher DIR (its config.json is all it reads)");
  const auto dir = checkpoint::model_dir(cfg.run.teacher);
  QAD_CHECK(std::filesystem::exists(dir / "config.json"), "--plan: {} has no config.json (--teacher names an HF "
            "model directory, an NVFP4 export or a training checkpoint)", dir.string());
  const auto config = model::load_config(dir);
  if (settings.quantized_weight_elements < 0) settings.quantized_weight_elements = fake_quantized_weight_elements(config, cfg);
  std::optional<double> device_bytes;
  if (device_gb) {
    QAD_CHECK(std::isfinite(*device_gb) && *device_gb > 0, "--gpu-memory {}: must be a positive number of GB", *device_gb);
    device_bytes = *device_gb * 1e9;
  } else if (cfg.run.device != "cpu" && compat::cuda_available()) {
    const auto dev = model::parse_device(cfg.run.device == "auto" ? std::string("cuda") : cfg.run.device);
    if (auto b = model::total_device_bytes(dev)) device_bytes = static_cast<double>(*b);
  }
  std::optional<double> host;
  if (auto b = available_host_bytes()) host = static_cast<double>(*b);
  if (!cfg.run.teacher_cache.empty() && settings.cache_top_k <= 0) {
    // The run reads the first loss.top_k of the cached k (all of them when 0).
    const auto layout = TeacherCache(cfg.run.teacher_cache).manifest().layout;
    settings.cache_top_k = cfg.loss.top_k > 0 ? std::min(cfg.loss.top_k, layout.top_k) : layout.top_k;
    settings.cache_value_bytes = static_cast<int64_t>(c10::elementSize(layout.value_dtype));
  }
  const auto plan = plan_memory(config, cfg, settings);
  return format_plan(plan, config, cfg, settings, device_bytes, host);
}

}  // namespace qad::train
