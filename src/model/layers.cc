// Decoder building blocks; each mirrors the transformers code it is checked against (named in comments).
#include "model/layers.h"

#include <cmath>
#include <limits>

#include "fused/autograd.h"
#include "fused/rms_norm.h"
#include "fused/rope.h"
#include "fused/swiglu.h"
#include "nvfp4/quantize.h"
#include "model/moe_block.h"
#include "util/error.h"
#include "util/torch_compat.h"

namespace qad::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

// LlamaRMSNorm: normalise in FP32, cast back, then scale (the cast comes before the weight multiply).
torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto h = x.to(torch::kFloat32);
  auto variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * torch::rsqrt(variance + eps);
  return weight * h.to(x.scalar_type());
}

torch::Tensor rope_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  // transformers: 1 / theta ** (arange(0, dim, 2, int64).float() / dim)
  auto exponent = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / static_cast<double>(dim);
  auto inv_freq = 1.0 / torch::pow(torch::tensor(c.rope_theta, torch::kFloat32), exponent);
  if (c.rope_scaling.type != RopeScaling::Type::kLlama3) return inv_freq;
  // _compute_llama3_parameters
  const auto& s = c.rope_scaling;
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / s.low_freq_factor;
  const double high_freq_wavelen = old_len / s.high_freq_factor;
  auto wavelen = 2 * M_PI / inv_freq;
  auto scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  auto smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  auto is_medium = (wavelen < high_freq_wavelen).logical_not().logical_and((wavelen > low_freq_wavelen).logical_not());
  return torch::where(is_medium, smoothed, scaled);
}

namespace {

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// apply_rotary_pos_emb with cos/sin [B, T, D] broadcast over heads of x [B, H, T, D].
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return (x * cos.unsqueeze(1)) + (rotate_half(x) * sin.unsqueeze(1));
}

// repeat_kv: [B, Hkv, S, D] -> [B, Hkv*n_rep, S, D].
torch::Tensor repeat_kv(const torch::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  const auto b = x.size(0), h = x.size(1), s = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, n_rep, s, d}).reshape({b, h * n_rep, s, d});
}

// eager_attention_forward: scores in the model dtype, softmax in FP32, cast back, then @ v.
torch::Tensor math_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const AttentionContext& ctx) {
  const double scaling = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = torch::matmul(q, k.transpose(2, 3)) * scaling;
  torch::Tensor keep = ctx.mask;
  if (!keep.defined() && ctx.causal && q.size(2) > 1) {
    keep = torch::ones({q.size(2), k.size(2)}, q.options().dtype(torch::kBool)).tril(k.size(2) - q.size(2));
  }
  if (keep.defined()) scores = scores.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());
  return torch::matmul(probs, v);
}

bool use_sdpa(const AttentionContext& ctx, const torch::Tensor& q) {
  switch (ctx.backend) {
    case AttentionBackend::kMath: return false;
    case AttentionBackend::kSdpa:
      QAD_CHECK(compat::kHasSdpa, "attention backend sdpa needs LibTorch >= 2.0 (this build has {}.{})",
                TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR);
      return true;
    case AttentionBackend::kAuto: return compat::kHasSdpa && q.is_cuda();
  }
  return false;
}

// The input quantization that Linears reading one tensor (q/k/v, gate/up) agree on, so that the fused norm
// applies it once; nullopt when one of them must run its own input() or their quantizers differ (then the norm
// is fused without quantization and each Linear quantizes its input itself).
std::optional<FusedInputQuant> shared_input_quant(std::initializer_list<LinearImpl*> linears, const torch::Device& d) {
  std::optional<FusedInputQuant> common;
  for (auto* l : linears) {
    auto q = l->fused_input(d);
    if (!q) return std::nullopt;
    if (!common) {
      common = q;
    } else if (q->amax.defined() != common->amax.defined() ||
               (q->amax.defined() && (q->amax_value != common->amax_value || q->clipped_ste != common->clipped_ste))) {
      return std::nullopt;
    }
  }
  return common;
}

fused::OutputQuant output_quant(const std::optional<FusedInputQuant>& q) {
  if (!q) return {};
  return {q->amax, q->clipped_ste};
}

// Whether a fused op whose CUDA kernel takes tensors passing `cuda_supports` runs for t (see FusedKernels).
bool fused_applies(FusedKernels mode, const torch::Tensor& t, bool (*cuda_supports)(const torch::Tensor&)) {
  if (mode == FusedKernels::kOff) return false;
  if (t.is_cuda()) return nvfp4::has_cuda_kernels() && cuda_supports(t);
  const auto dt = t.scalar_type();
  return mode == FusedKernels::kAlways && t.is_cpu() &&
         (dt == torch::kFloat32 || dt == torch::kFloat16 || dt == torch::kBFloat16);
}

}  // namespace

bool use_fused_kernels(const AttentionContext& ctx, const torch::Tensor& x) {
  return fused_applies(ctx.fused, x, fused::rms_norm_cuda_supports);
}

AttentionImpl::AttentionImpl(const ModelConfig& c, const std::string& prefix, int64_t layer)
    : layer_(layer), num_heads_(c.num_heads), num_kv_heads_(c.num_kv_heads), head_dim_(c.head_dim) {
  q_proj = register_module("q_proj", Linear(prefix + ".q_proj", c.hidden_size, c.q_size(), c.qkv_bias));
  k_proj = register_module("k_proj", Linear(prefix + ".k_proj", c.hidden_size, c.kv_size(), c.qkv_bias));
  v_proj = register_module("v_proj", Linear(prefix + ".v_proj", c.hidden_size, c.kv_size(), c.qkv_bias));
  o_proj = register_module("o_proj", Linear(prefix + ".o_proj", c.q_size(), c.hidden_size, c.o_bias));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(c.head_dim, c.rms_norm_eps));
    k_norm = register_module("k_norm", RMSNorm(c.head_dim, c.rms_norm_eps));
  }
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const AttentionContext& ctx, bool input_quantized) {
  const auto b = x.size(0), t = x.size(1);
  auto project = [&](Linear& l) { return input_quantized ? l->forward_prequantized(x) : l(x); };
  auto q = project(q_proj).view({b, t, num_heads_, head_dim_});
  auto k = project(k_proj).view({b, t, num_kv_heads_, head_dim_});
  auto v = project(v_proj).view({b, t, num_kv_heads_, head_dim_}).transpose(1, 2);
  if (!ctx.cos.defined()) {  // no RoPE (NemotronH's attention)
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
  } else if (fused_applies(ctx.fused, q, fused::rope_cuda_supports)) {
    // q/k norm (Qwen3) and RoPE in one kernel each, written as [B, H, T, D].
    q = fused::rope(q, q_norm ? q_norm->weight : torch::Tensor(), q_norm ? q_norm->eps : 0.0, ctx.cos, ctx.sin);
    k = fused::rope(k, k_norm ? k_norm->weight : torch::Tensor(), k_norm ? k_norm->eps : 0.0, ctx.cos, ctx.sin);
  } else {
    if (q_norm) {  // Qwen3Attention normalises per head before RoPE
      q = q_norm(q);
      k = k_norm(k);
    }
    q = apply_rotary(q.transpose(1, 2), ctx.cos, ctx.sin);
    k = apply_rotary(k.transpose(1, 2), ctx.cos, ctx.sin);
  }
  // Before the cache write: the cache holds the quantized values, so decoding attends to what a recompute does.
  if (kv_quant) std::tie(k, v) = kv_quant->apply(k, v, ctx.token_mask);
  if (ctx.cache != nullptr) std::tie(k, v) = ctx.cache->append(layer_, k, v);
  const int64_t n_rep = num_heads_ / num_kv_heads_;
  torch::Tensor out;
  if (t == 1 && n_rep > 1 && ctx.cache != nullptr) {
    // Decoding one token: the n_rep query heads that share a kv head become n_rep query rows of that head,
    // so the cached k/v are read in place instead of repeated (the same products, no copy of the cache).
    AttentionContext grouped = ctx;
    grouped.causal = false;  // the rows are heads, not positions; the mask (if any) broadcasts over them
    auto qg = q.reshape({b, num_kv_heads_, n_rep, head_dim_});
    auto og = use_sdpa(ctx, q) ? compat::scaled_dot_product_attention(qg, k, v, ctx.mask, false)
                               : math_attention(qg, k, v, grouped);
    out = og.reshape({b, num_heads_, 1, head_dim_});
  } else if (use_sdpa(ctx, q)) {
    // Like transformers: native GQA only without a mask (the masked kernels do not take it), else repeat.
    const bool gqa = compat::kSdpaHasGqa && !ctx.mask.defined() && n_rep > 1;
    if (!gqa) {
      k = repeat_kv(k, n_rep);
      v = repeat_kv(v, n_rep);
    }
    out = compat::scaled_dot_product_attention(q, k, v, ctx.mask, !ctx.mask.defined() && ctx.causal && t > 1, gqa);
  } else {
    out = math_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), ctx);
  }
  return o_proj(out.transpose(1, 2).reshape({b, t, num_heads_ * head_dim_}));
}

MLPImpl::MLPImpl(const ModelConfig& c, const std::string& prefix) {
  gate_proj = register_module("gate_proj", Linear(prefix + ".gate_proj", c.hidden_size, c.intermediate_size, c.mlp_bias));
  up_proj = register_module("up_proj", Linear(prefix + ".up_proj", c.hidden_size, c.intermediate_size, c.mlp_bias));
  down_proj = register_module("down_proj", Linear(prefix + ".down_proj", c.intermediate_size, c.hidden_size, c.mlp_bias));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x, bool input_quantized, FusedKernels fuse) {
  auto project = [&](Linear& l) { return input_quantized ? l->forward_prequantized(x) : l(x); };
  auto gate = project(gate_proj), up = project(up_proj);
  if (!fused_applies(fuse, gate, fused::swiglu_cuda_supports)) return down_proj(torch::silu(gate) * up);
  auto down_q = down_proj->fused_input(gate.device());
  if (!down_q) return down_proj(fused::swiglu(gate, up));
  return down_proj->forward_prequantized(fused::swiglu(gate, up, output_quant(down_q)));
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer) {
  const std::string prefix = "model.layers." + std::to_string(layer);
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  self_attn = register_module("self_attn", Attention(c, prefix + ".self_attn", layer));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  if (c.is_moe_layer(layer)) {
    moe = register_module("mlp", std::make_shared<MoeBlockImpl>(c, prefix + ".mlp", layer));
  } else {
    mlp = register_module("mlp", MLP(c, prefix + ".mlp"));
  }
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const AttentionContext& ctx) {
  auto [h, added] = residual_and_mlp(x, ctx);
  return h + added;
}

TappedSum DecoderLayerImpl::forward_tapped(const torch::Tensor& x, const AttentionContext& ctx, const RowTap& tap,
                                          const torch::Tensor& x_residual) {
  auto [h, added] = residual_and_mlp(x, ctx, x_residual);
  return add_and_tap_rows(h, added, tap);
}

std::pair<torch::Tensor, torch::Tensor> DecoderLayerImpl::residual_and_mlp(const torch::Tensor& x,
                                                                           const AttentionContext& ctx,
                                                                           const torch::Tensor& x_residual) {
  const auto& residual = x_residual.defined() ? x_residual : x;
  if (!use_fused_kernels(ctx, x)) {
    auto h = residual + self_attn(input_layernorm(x), ctx);
    auto normed = post_attention_layernorm(h);
    return {h, moe ? moe->forward(normed, ctx) : mlp(normed)};
  }
  // Each norm also applies the input quantizer its readers share, so they skip their own; the residual add
  // before the second norm is part of its kernel.
  auto& attn = *self_attn;
  auto attn_q = shared_input_quant({attn.q_proj.get(), attn.k_proj.get(), attn.v_proj.get()}, x.device());
  auto normed = fused::rms_norm(x, input_layernorm->weight, input_layernorm->eps, output_quant(attn_q));
  auto attn_out = attn.forward(normed, ctx, attn_q.has_value());
  if (moe) {
    // Experts quantize their own inputs (each has its own input scale): the norm output stays unquantized.
    auto [h, moe_in] = fused::add_rms_norm(residual, attn_out, post_attention_layernorm->weight, post_attention_layernorm->eps,
                                           output_quant(std::nullopt));
    return {h, moe->forward(moe_in, ctx)};
  }
  auto& m = *mlp;
  auto mlp_q = shared_input_quant({m.gate_proj.get(), m.up_proj.get()}, x.device());
  auto [h, mlp_in] = fused::add_rms_norm(residual, attn_out, post_attention_layernorm->weight, post_attention_layernorm->eps,
                                         output_quant(mlp_q));
  return {h, m.forward(mlp_in, mlp_q.has_value(), ctx.fused)};
}

}  // namespace qad::model
