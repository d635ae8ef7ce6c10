// The decoder's building blocks, each a torch module named like its HF counterpart so that parameter
// paths equal HF tensor names: RMSNorm, rotary embedding, attention (math or fused SDPA), SwiGLU MLP and
// the decoder layer. Numerics follow transformers' modeling_llama / qwen2 / qwen3 operation for operation.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/hidden_rows.h"
#include "model/kv_cache.h"
#include "model/linear.h"

namespace qad::model {

// kAuto: fused SDPA on CUDA with LibTorch >= 2.0, the math path elsewhere (exact on CPU in FP32).
enum class AttentionBackend { kAuto, kMath, kSdpa };

// Where the fused kernels of src/fused (norms with the next Linears' input quantization, SwiGLU, q/k-norm + RoPE)
// replace the unfused ops: kAuto on CUDA where the kernels take the shapes; kOff nowhere; kAlways also on the CPU
// (float32/16-bit), through their reference loops: slow, for testing the wiring where there is no GPU.
enum class FusedKernels { kOff, kAuto, kAlways };

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// Inverse RoPE frequencies [head_dim/2] in FP32, with llama3 scaling applied when configured.
torch::Tensor rope_inv_freq(const ModelConfig& c);

// What every layer's attention needs for one forward pass.
struct AttentionContext {
  torch::Tensor cos, sin;  // [B, T, head_dim], model dtype; undefined = no RoPE (NemotronH)
  torch::Tensor mask;      // bool [B, 1, T, S] (true = attend) or undefined
  bool causal = true;      // with no mask: causal over T (no cache) or attend-to-all (decode step)
  AttentionBackend backend = AttentionBackend::kAuto;
  KVStore* cache = nullptr;
  FusedKernels fused = FusedKernels::kOff;
  // Read by MoE blocks (moe_block.h):
  torch::Tensor token_mask;  // [B, T] for this call's tokens, 1 = real; undefined = all real
  std::vector<std::pair<int64_t, torch::Tensor>>* router_logits = nullptr;  // (layer, [B*T, E]) appended
  bool calibrate_all_experts = false;  // run every expert on every token (calibration only)
};

// Whether a layer runs its norms through the fused kernels (src/fused) for input x (see FusedKernels).
bool use_fused_kernels(const AttentionContext& ctx, const torch::Tensor& x);

// What an attention layer does to its keys and values before they are attended to and cached: implemented by the
// FP8 KV-cache quantization (quant/kv_quant.h). k: [B, Hkv, T, D] after q/k-norm (Qwen3) and RoPE; v: [B, Hkv, T,
// D] as v_proj gave them; both as the cache stores them (before any repeat to the query heads), on every
// attention path (math, SDPA, fused q/k-norm + RoPE, cached decoding), so that a cached key is the same value
// a full recompute attends to. token_mask: [B, T], 1 = real token (calibration skips padding), or undefined.
struct KVQuantHook {
  virtual ~KVQuantHook() = default;
  virtual std::pair<torch::Tensor, torch::Tensor> apply(const torch::Tensor& k, const torch::Tensor& v,
                                                        const torch::Tensor& token_mask) = 0;
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& c, const std::string& prefix, int64_t layer);
  // input_quantized: x already went through the shared input quantization of q/k/v (see DecoderLayer).
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx, bool input_quantized = false);
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // Qwen3 only
  std::shared_ptr<KVQuantHook> kv_quant;      // FP8 KV cache emulation; null = keys/values as computed

 private:
  int64_t layer_, num_heads_, num_kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(const ModelConfig& c, const std::string& prefix);
  // input_quantized: x already went through gate/up's shared input quantization; fuse: SwiGLU (with
  // down_proj's input quantization) as one CUDA kernel.
  torch::Tensor forward(const torch::Tensor& x, bool input_quantized = false, FusedKernels fuse = FusedKernels::kOff);
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

class MoeBlockImpl;  // moe_block.h

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& c, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx);
  // forward(x, ctx) with the output's rows tapped for the CKA term as tap_hidden_rows would, the gather done by
  // the layer's last residual add (add_and_tap_rows). x_residual: the previous tapped layer's `residual` (x's
  // values), read by this layer's residual add in place of x, so that the two gradients of x meet in the previous
  // layer's backward; undefined: x.
  TappedSum forward_tapped(const torch::Tensor& x, const AttentionContext& ctx, const RowTap& tap,
                           const torch::Tensor& x_residual = {});
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};                   // dense layers
  std::shared_ptr<MoeBlockImpl> moe;  // sparse layers (config.is_moe_layer), registered as "mlp" instead

 private:
  // Everything but the last residual add: {h, what the MLP (or the experts) adds to it}. The first residual add
  // reads x_residual (x when undefined).
  std::pair<torch::Tensor, torch::Tensor> residual_and_mlp(const torch::Tensor& x, const AttentionContext& ctx,
                                                           const torch::Tensor& x_residual = {});
};
TORCH_MODULE(DecoderLayer);

}  // namespace qad::model
