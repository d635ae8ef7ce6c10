// CausalLM: a Llama / Qwen2 / Qwen3 decoder-only LM loaded from (and saved as) an HF checkpoint. The
// module tree mirrors HF's, so named_parameters() are HF tensor names. forward() returns logits and, on
// request, the residual stream after every decoder layer and after the final norm (for CKA).
#pragma once
#include <torch/torch.h>

#include <functional>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/linear.h"

namespace qad::model {

struct MambaCache;  // mamba2.h

// The rows a forward keeps of each hidden state (ForwardOptions::hidden_rows_source): their int64 [n] index, and
// optionally the fused row taps' row -> slot map of it (int32 [B*T], -1 for a row not kept; fused/add_gather_rows.h)
// where the chooser built it on the host with the index (one copy instead of three kernels); else undefined.
struct ChosenRows {
  torch::Tensor index, slots;
  ChosenRows(torch::Tensor i = {}, torch::Tensor s = {}) : index(std::move(i)), slots(std::move(s)) {}  // NOLINT
};

struct ForwardOptions {
  bool return_hidden = false;     // fill ForwardOutput::hidden
  torch::Tensor hidden_rows;      // int64 [n]: keep only these rows of each flattened [B*T, H] hidden state
                                  // (the CKA term's tokens; the teacher then holds n rows per layer, not B*T)
  // Instead of hidden_rows: called once, after the first layer's work is queued, for the rows to keep. Choosing
  // them is host work (the CKA term's random sample, ~0.3 ms) that the GPU, idle at a step's start, would
  // otherwise wait for. An undefined tensor from it keeps every row. ForwardOutput::hidden_rows returns them, for
  // the student's forward.
  std::function<ChosenRows()> hidden_rows_source;
  // With hidden_rows: ForwardOutput::hidden_row_slots of a forward over the same rows and batch shape (the
  // teacher's, for the student), instead of building the map again; undefined: built here.
  torch::Tensor hidden_row_slots;
  torch::Tensor attention_mask;   // [B, past + T], 1 = token, 0 = padding; undefined = no padding
  torch::Tensor position_ids;     // [B, T]; undefined = from attention_mask (HF generate's rule) or past + arange
  KVCache* cache = nullptr;       // incremental decoding: reads past keys/values, appends this step's
  MambaCache* mamba_cache = nullptr;  // NemotronH decoding: the Mamba layers' conv + SSM states, with `cache`
  // Instead of `cache`: a store that keeps its own per-row lengths (SlotKVCache, continuous batching). The
  // caller then gives position_ids and, where rows differ in length, attention_keep.
  KVStore* kv_store = nullptr;
  torch::Tensor attention_keep;   // with kv_store: bool [B, 1, T, S] (true = attend), used as is; undefined = causal over T
  torch::Tensor logits_positions; // int64 [B]: logits of this position of each row only (logits [B, 1, vocab])
  bool checkpoint_layers = false; // activation checkpointing: recompute each layer in backward
  AttentionBackend attention = AttentionBackend::kAuto;
  int64_t logits_to_keep = 0;     // > 0: logits of the last N positions only; 0: all
  // RMSNorm (+ residual add, + the NVFP4 input quantization of the Linears it feeds), SwiGLU (+ down_proj's) and
  // q/k-norm + RoPE as fused kernels (src/fused), on CUDA by default (FusedKernels). The environment's
  // QAD_FUSED_KERNELS=0 turns them off for the whole process.
  FusedKernels fused_kernels = FusedKernels::kAuto;
  bool skip_logits = false;       // no lm_head: ForwardOutput::final_hidden instead (the fused head losses take it)
  bool return_router_logits = false;   // fill ForwardOutput::router_logits (MoE models)
  bool calibrate_all_experts = false;  // MoE calibration: every expert also runs on every token (moe_block.h)
};

struct ForwardOutput {
  torch::Tensor logits;  // [B, T (or logits_to_keep), vocab], model dtype; undefined with skip_logits
  torch::Tensor final_hidden;  // [B, T, H] after the final norm; only with skip_logits
  // "layers.0" … "layers.{L-1}" (each decoder layer's output, the residual stream) and "norm" (after the
  // final RMSNorm): the tensors the model computed, not copies; [n, H] gathers when hidden_rows is given.
  std::vector<std::pair<std::string, torch::Tensor>> hidden;
  // With hidden_rows: how many rows of scratch follow each state's [n, H] rows in the buffer they were gathered
  // into (rows of no state, that a consumer may overwrite: loss::linear_cka_batched's scratch_rows); 0 otherwise.
  int64_t hidden_scratch_rows = 0;
  torch::Tensor hidden_rows;  // the rows kept: ForwardOptions::hidden_rows or what hidden_rows_source gave
                              // (undefined: every row)
  torch::Tensor hidden_row_slots;  // the fused row taps' row -> slot map of hidden_rows (CUDA; else undefined)
  // MoE models with return_router_logits: "layers.N" -> the router logits [B*T, num_experts] of each sparse
  // layer, model dtype, differentiable (without grad under activation checkpointing).
  std::vector<std::pair<std::string, torch::Tensor>> router_logits;
};

// The embedding table as a module so that its parameter is "model.embed_tokens.weight".
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t dim) { weight = register_parameter("weight", torch::empty({vocab, dim})); }
  torch::Tensor forward(const torch::Tensor& ids) { return torch::embedding(weight, ids); }
  torch::Tensor weight;
};
TORCH_MODULE(Embedding);

class NemotronHBlockImpl;  // nemotron_h.h

// HF's "model" submodule: embeddings, layers, final norm. NemotronH: "backbone" with "embeddings", "layers"
// (hybrid blocks, in block_list; layer_list stays empty) and "norm_f", as its checkpoints name them.
class DecoderStackImpl : public torch::nn::Module {
 public:
  explicit DecoderStackImpl(const ModelConfig& c);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<DecoderLayer> layer_list;  // typed views of `layers`
  std::vector<std::shared_ptr<NemotronHBlockImpl>> block_list;  // NemotronH: typed views of `layers`
  RMSNorm norm{nullptr};
};
TORCH_MODULE(DecoderStack);

// Called around every decoder layer of every forward of a model that has them (CausalLMImpl::layer_hooks):
// fully sharded training (train/fully_sharded.h) gathers a layer's parameters before it runs and releases
// them after, and hooks the backward on the layer's input and output. LibTorch C++ modules have no forward
// pre-hooks, hence this explicit point in the layer loop. Decoder stacks only (not NemotronH).
class LayerHooks {
 public:
  virtual ~LayerHooks() = default;
  virtual void before_layer(int64_t layer) = 0;
  // input / output: the tensors the layer took and returned (in the autograd graph when grad mode is on). With
  // CKA rows tapped inside the layers (ForwardOptions::hidden_rows), the next layer's residual add reads a second
  // output of the same autograd node as `output`: a hook on `output` fires when that node runs, with the gradient
  // of the next layer's norm path only; it is a signal, not the whole gradient.
  virtual void after_layer(int64_t layer, const torch::Tensor& input, const torch::Tensor& output) = 0;
};

struct SaveOptions {
  uint64_t max_shard_bytes = 5ull << 30;  // HF's default 5 GB; 0 = one file
};

class CausalLMImpl : public torch::nn::Module {
 public:
  explicit CausalLMImpl(const ModelConfig& c);

  ForwardOutput forward(const torch::Tensor& input_ids, const ForwardOptions& options = {});

  const ModelConfig& config() const { return config_; }
  // Every Linear in execution order: per layer q, k, v, o, then gate, up, down (dense) or the router
  // "mlp.gate" and each expert's gate, up, down (sparse); then lm_head. NemotronH: per block its mixer's
  // (Mamba in_proj, out_proj; q, k, v, o; up, down; router, each expert's up, down, the shared expert's up, down).
  std::vector<Linear> linears() const;
  // HF tensor name -> parameter, exactly the tensors of an HF checkpoint of this model (lm_head.weight
  // is absent when tied). This one table serves loading and saving.
  std::vector<std::pair<std::string, torch::Tensor>> hf_tensors() const;
  // Writes config.json and the safetensors (sharded above max_shard_bytes) into `dir`, atomically.
  void save(const std::filesystem::path& dir, const SaveOptions& options = {}) const;

  DecoderStack model{nullptr};
  Linear lm_head{nullptr};
  std::shared_ptr<LayerHooks> layer_hooks;  // null: none (the usual case)

 private:
  ForwardOutput forward_hybrid(const torch::Tensor& input_ids, const ForwardOptions& options);
  ModelConfig config_;
  torch::Tensor inv_freq_;  // FP32 [head_dim/2], on the model's device (refreshed lazily)
};

class CausalLM : public torch::nn::ModuleHolder<CausalLMImpl> {
 public:
  using torch::nn::ModuleHolder<CausalLMImpl>::ModuleHolder;
  // Loads config.json and the weights (model.safetensors or an index + shards) from an HF directory.
  // dtype: the parameters' dtype (kFloat32 on CPU, kBFloat16 on GPU are the usual choices).
  static CausalLM load(const std::filesystem::path& dir, torch::Device device, torch::ScalarType dtype);
  // BF16 on CUDA, FP32 on CPU.
  static torch::ScalarType default_dtype(torch::Device device);
};

// "float32", "bfloat16", "float16" <-> torch dtypes (the names config.json uses).
std::string dtype_config_name(torch::ScalarType t);

}  // namespace qad::model
