// Decoder building blocks; each mirrors the transformers code it is checked against (named in comments).
#include "model/layers.h"

#include <cmath>
#include <limits>

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

}  // namespace

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

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const AttentionContext& ctx) {
  const auto b = x.size(0), t = x.size(1);
  auto q = q_proj(x).view({b, t, num_heads_, head_dim_});
  auto k = k_proj(x).view({b, t, num_kv_heads_, head_dim_});
  auto v = v_proj(x).view({b, t, num_kv_heads_, head_dim_}).transpose(1, 2);
  if (q_norm) {  // Qwen3Attention normalises per head before RoPE
    q = q_norm(q);
    k = k_norm(k);
  }
  q = apply_rotary(q.transpose(1, 2), ctx.cos, ctx.sin);
  k = apply_rotary(k.transpose(1, 2), ctx.cos, ctx.sin);
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

torch::Tensor MLPImpl::forward(const torch::Tensor& x) { return down_proj(torch::silu(gate_proj(x)) * up_proj(x)); }

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer) {
  const std::string prefix = "model.layers." + std::to_string(layer);
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  self_attn = register_module("self_attn", Attention(c, prefix + ".self_attn", layer));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  mlp = register_module("mlp", MLP(c, prefix + ".mlp"));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const AttentionContext& ctx) {
  auto h = x + self_attn(input_layernorm(x), ctx);
  return h + mlp(post_attention_layernorm(h));
}

}  // namespace qad::model
