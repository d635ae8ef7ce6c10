// CausalLM construction and forward: positions, RoPE tables and the attention mask are computed once per
// call and shared by every layer; layers optionally run under activation checkpointing.
#include "model/causal_lm.h"

#include <cstdlib>
#include <optional>
#include <string>

#include "fused/add_gather_rows.h"
#include "fused/autograd.h"
#include "model/checkpointing.h"
#include "model/hidden_rows.h"
#include "model/moe_block.h"
#include "model/nemotron_h.h"
#include "util/error.h"
#include "util/torch_format.h"

namespace qad::model {

DecoderStackImpl::DecoderStackImpl(const ModelConfig& c) {
  const bool hybrid = c.hybrid.has_value();
  embed_tokens = register_module(hybrid ? "embeddings" : "embed_tokens", Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (hybrid) {
      block_list.push_back(std::make_shared<NemotronHBlockImpl>(c, l));
      layers->push_back(block_list.back());
    } else {
      layer_list.emplace_back(c, l);
      layers->push_back(layer_list.back());
    }
  }
  norm = register_module(hybrid ? "norm_f" : "norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

CausalLMImpl::CausalLMImpl(const ModelConfig& c) : config_(c) {
  // NemotronH's checkpoints (NVIDIA's, and transformers 5.17's save_pretrained) name the decoder "backbone".
  model = register_module(c.hybrid ? "backbone" : "model", DecoderStack(c));
  lm_head = register_module("lm_head", Linear("lm_head", c.hidden_size, c.vocab_size, false, !c.tie_word_embeddings));
  // Tied: one parameter, listed once (as the embedding); lm_head holds the same tensor unregistered.
  if (c.tie_word_embeddings) lm_head->share_weight(model->embed_tokens->weight);
}

std::vector<Linear> CausalLMImpl::linears() const {
  std::vector<Linear> out;
  for (const auto& block : model->block_list) {
    if (block->mamba) {
      out.push_back(block->mamba->in_proj);
      out.push_back(block->mamba->out_proj);
    } else if (block->attention) {
      const auto& a = block->attention;
      for (const auto& l : {a->q_proj, a->k_proj, a->v_proj, a->o_proj}) out.push_back(l);
    } else if (block->mlp) {
      out.push_back(block->mlp->up_proj);
      out.push_back(block->mlp->down_proj);
    } else if (block->moe) {
      out.push_back(block->moe->gate);
      for (const auto& e : block->moe->expert_list) {
        out.push_back(e->up_proj);
        out.push_back(e->down_proj);
      }
      out.push_back(block->moe->shared_experts->up_proj);
      out.push_back(block->moe->shared_experts->down_proj);
    }
  }
  for (const auto& layer : model->layer_list) {
    const auto& a = layer->self_attn;
    for (const auto& l : {a->q_proj, a->k_proj, a->v_proj, a->o_proj}) out.push_back(l);
    if (layer->moe) {
      out.push_back(layer->moe->gate);
      for (const auto& e : layer->moe->expert_list) {
        for (const auto& l : {e->gate_proj, e->up_proj, e->down_proj}) out.push_back(l);
      }
    } else {
      const auto& m = layer->mlp;
      for (const auto& l : {m->gate_proj, m->up_proj, m->down_proj}) out.push_back(l);
    }
  }
  out.push_back(lm_head);
  return out;
}

namespace {

// The keep-mask [B, 1, T, S]: causal over absolute positions, padding keys removed, and each query always
// sees itself so that rows of padding stay finite (their outputs are never used).
torch::Tensor build_mask(const torch::Tensor& attention_mask, int64_t batch, int64_t past, int64_t t,
                         torch::Device device) {
  const int64_t s = past + t;
  auto opts = torch::TensorOptions().device(device).dtype(torch::kLong);
  auto q_pos = torch::arange(past, s, opts).unsqueeze(1);  // [T, 1]
  auto k_pos = torch::arange(0, s, opts).unsqueeze(0);     // [1, S]
  auto keep = (k_pos <= q_pos).unsqueeze(0).expand({batch, t, s});
  if (attention_mask.defined()) {
    keep = keep.logical_and(attention_mask.to(device).to(torch::kBool).unsqueeze(1));
    keep = keep.logical_or((k_pos == q_pos).unsqueeze(0));
  }
  return keep.unsqueeze(1);
}

// QAD_FUSED_KERNELS=0 turns the fused kernels off for a whole process (A/B measurements, debugging).
bool fused_kernels_allowed_by_environment() {
  static const bool allowed = [] {
    const char* v = std::getenv("QAD_FUSED_KERNELS");
    return v == nullptr || std::string(v) != "0";
  }();
  return allowed;
}

// A block's output for ForwardOutput::hidden (when asked for). With hidden_rows, x becomes a pass-through of
// itself whose backward adds the rows' gradient in place of index_select's full-size zero tensor (hidden_rows.h),
// and the rows of all `entries` states go into slices of one buffer (loss::stack_rows stacks them without a copy),
// each followed by kScratchRows rows of no state: the CKA backward writes its centring correction there instead of
// a centred copy of the rows (loss/cka.h, scratch_rows; 8 rows of 1024 are 0.8 % more buffer). A decoder layer
// that is not checkpointed gathers its own rows (tap_like, record).
struct HiddenKeeper {
  static constexpr int64_t kScratchRows = 8;
  const ForwardOptions& o;
  ForwardOutput& out;
  int64_t entries = 0;
  torch::Tensor buffer;  // [entries, n + kScratchRows, H], allocated at the first state
  int64_t next = 0;

  void keep(std::string name, torch::Tensor& x) {
    if (!o.return_hidden) return;
    if (wants_rows()) resolve_rows();
    if (!wants_rows()) {
      out.hidden.emplace_back(std::move(name), x);
      return;
    }
    allocate(x);
    auto [passed, rows] = tap_hidden_rows(x, out.hidden_rows, fits(x) ? slice() : torch::Tensor());
    x = std::move(passed);
    record(std::move(name), std::move(rows));
  }

  // The rows a layer whose output is like x (dtype, width, device) taps itself (DecoderLayer::forward_tapped), or
  // none: no rows wanted; rows not chosen yet (hidden_rows_source: the first layer is tapped by keep(), after its
  // work is queued); or a state unlike the first, which keep() gives rows of their own. The caller records the
  // rows the layer returns.
  std::optional<RowTap> tap_like(const torch::Tensor& x, bool fused) {
    if (!o.return_hidden || !wants_rows()) return std::nullopt;
    if (o.hidden_rows.defined()) resolve_rows();
    if (!resolved) return std::nullopt;
    allocate(x);
    if (!fits(x)) return std::nullopt;
    if (!index.defined()) {
      index = out.hidden_rows.to(x.device());
      // The fused add's row-to-slot map (fused/add_gather_rows.h): built once per forward (or taken from the
      // forward the caller ran over the same rows), used by every layer. Without it the layers add and gather with
      // ATen's ops (fused kernels off: FusedKernels, QAD_FUSED_KERNELS).
      if (fused && x.is_cuda()) {
        const int64_t rows = x.numel() / x.size(-1);
        const auto& given = chosen_slots.defined() ? chosen_slots : o.hidden_row_slots;
        slots = given.defined() && given.dim() == 1 && given.size(0) == rows && given.device() == x.device()
                    ? given
                    : fused::slots_of_rows(index, rows);
        out.hidden_row_slots = slots;
      }
    }
    return RowTap{index, slots, slice()};
  }

  void record(std::string name, torch::Tensor rows) {
    ++next;
    out.hidden.emplace_back(std::move(name), std::move(rows));
  }

  torch::Tensor index, slots;  // tap_like's, on the states' device
  torch::Tensor chosen_slots;  // the slot map hidden_rows_source gave with the rows, if any

  // Rows of the states rather than the states: asked for, and (once chosen) not "every row", which a source
  // says with an undefined tensor (loss::select_cka_tokens when nothing is subsampled).
  bool resolved = false;
  bool wants_rows() const {
    return resolved ? out.hidden_rows.defined() : o.hidden_rows.defined() || static_cast<bool>(o.hidden_rows_source);
  }
  void resolve_rows() {
    if (resolved) return;
    resolved = true;
    if (o.hidden_rows.defined()) {
      out.hidden_rows = o.hidden_rows;
    } else {
      auto chosen = o.hidden_rows_source();
      out.hidden_rows = std::move(chosen.index);
      chosen_slots = std::move(chosen.slots);
    }
    QAD_CHECK(!out.hidden_rows.defined() || out.hidden_rows.dim() == 1,
              "CausalLM::forward: the hidden rows to keep must be an int64 [n] tensor");
  }
  void allocate(const torch::Tensor& x) {
    if (buffer.defined()) return;
    buffer = torch::empty({entries, out.hidden_rows.size(0) + kScratchRows, x.size(-1)}, x.options());
    out.hidden_scratch_rows = kScratchRows;
  }
  // A state of another dtype, width or device than the first (none in the models today) gets rows of its own.
  bool fits(const torch::Tensor& x) const {
    return next < entries && x.scalar_type() == buffer.scalar_type() && x.size(-1) == buffer.size(2) &&
           x.device() == buffer.device();
  }
  torch::Tensor slice() const { return buffer.select(0, next).narrow(0, 0, out.hidden_rows.size(0)); }
};

// The end of both forwards, after the final norm: the positions whose logits are wanted, then the lm_head (or,
// with skip_logits, the hidden states it would take) and the router logits by layer name.
ForwardOutput finish_forward(torch::Tensor h, const ForwardOptions& o, Linear& lm_head,
                             const std::vector<std::pair<int64_t, torch::Tensor>>& router_logits, ForwardOutput out) {
  const int64_t b = h.size(0), t = h.size(1);
  if (o.logits_positions.defined()) {
    QAD_CHECK(o.logits_positions.dim() == 1 && o.logits_positions.size(0) == b, "logits_positions must be [{}], got {}",
              b, shape_str(o.logits_positions.sizes()));
    auto index = o.logits_positions.to(h.device()).view({b, 1, 1}).expand({b, 1, h.size(-1)});
    h = h.gather(1, index);
  } else if (o.logits_to_keep > 0 && o.logits_to_keep < t) {
    h = h.narrow(1, t - o.logits_to_keep, o.logits_to_keep);
  }
  if (o.skip_logits) {
    out.final_hidden = h;
    return out;
  }
  out.logits = lm_head(h);
  for (const auto& [layer, logits] : router_logits) {
    out.router_logits.emplace_back("layers." + std::to_string(layer), logits);
  }
  return out;
}

}  // namespace

ForwardOutput CausalLMImpl::forward(const torch::Tensor& input_ids, const ForwardOptions& o) {
  QAD_CHECK(input_ids.dim() == 2 && input_ids.scalar_type() == torch::kLong,
            "CausalLM::forward: input_ids must be int64 [batch, tokens], got {} {}", c10::toString(input_ids.scalar_type()),
            shape_str(input_ids.sizes()));
  if (config_.hybrid) {
    QAD_CHECK(!layer_hooks, "NemotronHForCausalLM: fully sharded training (--zero 3) is not implemented for hybrid "
              "models yet; use --zero 1");
    return forward_hybrid(input_ids, o);
  }
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  QAD_CHECK(t > 0, "CausalLM::forward: no tokens");
  const int64_t past = o.cache != nullptr ? o.cache->length : 0;
  const auto& emb = model->embed_tokens->weight;
  const auto device = emb.device();
  const auto dtype = emb.scalar_type();
  QAD_CHECK(!(o.checkpoint_layers && (o.cache != nullptr || o.kv_store != nullptr)),
            "activation checkpointing and a KV cache do not mix");
  QAD_CHECK(o.kv_store == nullptr || (o.cache == nullptr && o.position_ids.defined() && !o.attention_mask.defined()),
            "CausalLM::forward: kv_store takes position_ids (and attention_keep), not cache or attention_mask");
  if (o.attention_mask.defined()) {
    QAD_CHECK(o.attention_mask.dim() == 2 && o.attention_mask.size(0) == b && o.attention_mask.size(1) == past + t,
              "attention_mask must be [batch, past + tokens] = [{}, {}], got {}", b, past + t, shape_str(o.attention_mask.sizes()));
  }

  torch::Tensor pos;
  if (o.position_ids.defined()) {
    QAD_CHECK(o.position_ids.sizes() == torch::IntArrayRef({b, t}), "position_ids must be [{}, {}], got {}", b, t,
              shape_str(o.position_ids.sizes()));
    pos = o.position_ids.to(device);
  } else if (o.attention_mask.defined()) {
    auto m = o.attention_mask.to(device).to(torch::kLong);  // HF generate: cumsum - 1, padding at 1
    pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 1).narrow(1, past, t);
  } else {
    pos = torch::arange(past, past + t, torch::TensorOptions().device(device).dtype(torch::kLong)).unsqueeze(0).expand({b, t});
  }
  if (!inv_freq_.defined() || inv_freq_.device() != device) inv_freq_ = rope_inv_freq(config_).to(device);
  // LlamaRotaryEmbedding: freqs = inv_freq x positions in FP32, cat(freqs, freqs), cos/sin cast to the dtype.
  auto freqs = pos.to(torch::kFloat32).unsqueeze(-1) * inv_freq_;
  auto angles = torch::cat({freqs, freqs}, -1);

  AttentionContext ctx;
  ctx.cos = angles.cos().to(dtype);
  ctx.sin = angles.sin().to(dtype);
  ctx.backend = o.attention;
  ctx.cache = o.cache;
  ctx.fused = fused_kernels_allowed_by_environment() ? o.fused_kernels : FusedKernels::kOff;
  if (o.attention_mask.defined()) ctx.token_mask = o.attention_mask.narrow(1, past, t).to(device);
  std::vector<std::pair<int64_t, torch::Tensor>> router_logits;
  if (o.return_router_logits) ctx.router_logits = &router_logits;
  ctx.calibrate_all_experts = o.calibrate_all_experts;
  if (o.kv_store != nullptr) {
    ctx.cache = o.kv_store;
    ctx.mask = o.attention_keep;
    ctx.causal = !o.attention_keep.defined();
  } else if (o.attention_mask.defined() || (past > 0 && t > 1)) {
    ctx.mask = build_mask(o.attention_mask, b, past, t, device);
  } else {
    ctx.causal = past == 0;  // a single new token after a cache attends to everything cached
  }

  ForwardOutput out;
  HiddenKeeper keeper{o, out, static_cast<int64_t>(model->layer_list.size()) + 1};  // every layer and the final norm
  auto keep_hidden = [&](std::string name, torch::Tensor& x) { keeper.keep(std::move(name), x); };
  auto h = model->embed_tokens(input_ids.to(device));
  torch::Tensor residual;  // a tapped layer's output again, for the next layer's residual add (DecoderLayer)
  for (size_t l = 0; l < model->layer_list.size(); ++l) {
    auto& layer = model->layer_list[l];
    const auto hooks = layer_hooks;  // (a copy: the hooks may be removed while they run)
    if (hooks) hooks->before_layer(static_cast<int64_t>(l));
    const auto input = h;
    const bool checkpointed = o.checkpoint_layers && torch::GradMode::is_enabled();
    // Outside a checkpoint the layer gathers its rows itself, in its last residual add; a checkpointed layer
    // (recomputed in backward) is tapped from outside.
    const auto tap = checkpointed ? std::nullopt : keeper.tap_like(h, use_fused_kernels(ctx, h));
    std::string name = "layers." + std::to_string(l);
    if (tap) {
      auto t = layer->forward_tapped(h, ctx, *tap, residual);
      h = std::move(t.sum);
      residual = std::move(t.residual);
      keeper.record(std::move(name), std::move(t.rows));
    } else {
      h = checkpointed ? checkpointed_layer(layer, h, ctx) : layer(h, ctx);
      residual = torch::Tensor();
    }
    if (hooks) hooks->after_layer(static_cast<int64_t>(l), input, h);
    if (!tap) keep_hidden(std::move(name), h);
  }
  h = use_fused_kernels(ctx, h) ? fused::rms_norm(h, model->norm->weight, model->norm->eps) : model->norm(h);
  keep_hidden("norm", h);
  if (o.cache != nullptr) o.cache->advance(t);
  return finish_forward(std::move(h), o, lm_head, router_logits, std::move(out));
}

// NemotronH: the blocks in order, no positions (its attention has no RoPE); the same options as above, with the
// Mamba states (mamba_cache) beside the KV cache when decoding. The slot store of continuous batching is refused.
ForwardOutput CausalLMImpl::forward_hybrid(const torch::Tensor& input_ids, const ForwardOptions& o) {
  QAD_CHECK(o.kv_store == nullptr,
            "NemotronHForCausalLM: continuous batching (a slot KV store) is not implemented yet: the Mamba states "
            "would need slots too; decode with a KVCache and a MambaCache");
  QAD_CHECK((o.cache == nullptr) == (o.mamba_cache == nullptr),
            "NemotronHForCausalLM: decoding needs both a KVCache (attention layers) and a MambaCache (Mamba layers)");
  QAD_CHECK(!(o.checkpoint_layers && (o.cache != nullptr || o.mamba_cache != nullptr)),
            "activation checkpointing and a KV / Mamba cache do not mix");
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  const int64_t past = o.cache != nullptr ? o.cache->length : 0;
  const auto device = model->embed_tokens->weight.device();
  if (o.attention_mask.defined()) {
    QAD_CHECK(o.attention_mask.dim() == 2 && o.attention_mask.size(0) == b && o.attention_mask.size(1) == past + t,
              "attention_mask must be [batch, past + tokens] = [{}, {}], got {}", b, past + t,
              shape_str(o.attention_mask.sizes()));
  }
  if (o.mamba_cache != nullptr) {
    o.mamba_cache->layers.resize(model->block_list.size());
    for (const auto& s : o.mamba_cache->layers) {
      QAD_CHECK(past > 0 || !s.ssm.defined(), "NemotronHForCausalLM: the MambaCache holds states but the KV cache is "
                "empty (a new sequence); use a fresh MambaCache");
    }
  }
  AttentionContext ctx;  // no cos/sin: no RoPE
  ctx.backend = o.attention;
  ctx.fused = FusedKernels::kOff;
  ctx.cache = o.cache;
  std::vector<std::pair<int64_t, torch::Tensor>> router_logits;
  if (o.return_router_logits) ctx.router_logits = &router_logits;
  ctx.calibrate_all_experts = o.calibrate_all_experts;
  if (o.attention_mask.defined()) ctx.token_mask = o.attention_mask.narrow(1, past, t).to(device);
  if (o.attention_mask.defined() || (past > 0 && t > 1)) {
    ctx.mask = build_mask(o.attention_mask, b, past, t, device);
  } else {
    ctx.causal = past == 0;  // a single new token after a cache attends to everything cached
  }
  ForwardOutput out;
  HiddenKeeper keeper{o, out, static_cast<int64_t>(model->block_list.size()) + 1};  // every block and the final norm
  auto keep_hidden = [&](std::string name, torch::Tensor& x) { keeper.keep(std::move(name), x); };
  auto h = model->embed_tokens(input_ids.to(device));
  for (size_t l = 0; l < model->block_list.size(); ++l) {
    auto& block = *model->block_list[l];
    h = o.checkpoint_layers && torch::GradMode::is_enabled()
            ? checkpointed_block(block, h, ctx)
            : block.forward(h, ctx, o.mamba_cache != nullptr ? &o.mamba_cache->layers[l] : nullptr);
    keep_hidden("layers." + std::to_string(l), h);
  }
  h = model->norm(h);
  keep_hidden("norm", h);
  if (o.cache != nullptr) o.cache->advance(t);
  return finish_forward(std::move(h), o, lm_head, router_logits, std::move(out));
}

torch::ScalarType CausalLM::default_dtype(torch::Device device) {
  return device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
}

}  // namespace qad::model
