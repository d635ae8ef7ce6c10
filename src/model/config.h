// ModelConfig: what qad needs from an HF config.json for LlamaForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM, Qwen3MoeForCausalLM and NemotronHForCausalLM, read from either the transformers 4.x keys
// (torch_dtype, rope_theta, rope_scaling) or the 5.x keys (dtype, rope_parameters). Anything else is refused
// with the list of what is supported.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace qad::model {

enum class Architecture { Llama, Qwen2, Qwen3, Qwen3Moe, NemotronH };

// RoPE frequency scaling; kNone is plain RoPE (HF rope_type "default").
struct RopeScaling {
  enum class Type { kNone, kLlama3 } type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// Sparse mixture-of-experts MLPs (Qwen3MoeForCausalLM): softmax top-k routing over `num_experts` SwiGLU
// experts. Layer l is sparse unless it is in mlp_only_layers or (l + 1) % decoder_sparse_step != 0
// (transformers' Qwen3MoeDecoderLayer rule); dense layers use intermediate_size.
struct MoeConfig {
  int64_t num_experts = 0;              // "num_experts" (4.x, published configs) or "num_local_experts" (5.x)
  int64_t top_k = 0;                    // "num_experts_per_tok"
  int64_t intermediate_size = 0;        // "moe_intermediate_size": each expert's SwiGLU width
  bool norm_topk_prob = false;          // renormalise the k selected probabilities to sum to 1
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
};

// NemotronH (hybrid): every layer ("block") is a pre-norm residual block holding exactly one mixer.
// hybrid_override_pattern characters M, *, -, E; transformers 5's layers_block_type names linear_attention
// (or mamba), full_attention (or attention), mlp, moe.
enum class BlockType { kMamba, kAttention, kMlp, kMoe };

// The Mamba-2 mixer of NemotronH (transformers' NemotronHMamba2Mixer).
struct MambaConfig {
  int64_t num_heads = 0;   // "mamba_num_heads"
  int64_t head_dim = 0;    // "mamba_head_dim"
  int64_t state_size = 0;  // "ssm_state_size"
  int64_t n_groups = 1;    // "n_groups" ("mamba_n_groups"): B and C are shared by num_heads / n_groups heads
  int64_t conv_kernel = 4; // "conv_kernel" ("mamba_d_conv")
  int64_t chunk_size = 128;  // "chunk_size" ("mamba_chunk_size"): the SSD scan's chunk length
  bool conv_bias = true;     // "use_conv_bias" ("mamba_conv_bias")
  bool proj_bias = false;    // "use_bias": in_proj / out_proj bias (transformers reads use_bias, not mamba_proj_bias)
  double dt_min = 0.001;     // the clamp of softplus(dt + dt_bias): "time_step_min" as transformers 5.17 reads it
  double dt_max = 0.0;       // +inf (5.17 ignores "time_step_limit")
  int64_t inner() const { return num_heads * head_dim; }
  int64_t conv_dim() const { return inner() + 2 * n_groups * state_size; }
  int64_t in_proj_size() const { return inner() + conv_dim() + num_heads; }  // gate | x B C | dt
};

// NemotronH's MoE block: sigmoid router with a correction bias (choice only), group-limited top-k, routed
// scaling, relu2 experts (up, down) and one shared relu2 MLP.
struct NemotronHMoeConfig {
  int64_t num_experts = 0;                // "n_routed_experts" (or "num_local_experts")
  int64_t top_k = 0;                      // "num_experts_per_tok"
  int64_t intermediate_size = 0;          // "moe_intermediate_size"
  int64_t shared_intermediate_size = 0;   // "moe_shared_expert_intermediate_size"
  int64_t n_group = 1, topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
};

struct HybridConfig {
  std::vector<BlockType> blocks;
  MambaConfig mamba;
  std::optional<NemotronHMoeConfig> moe;  // set when a block is kMoe
};

struct ModelConfig {
  Architecture arch = Architecture::Llama;
  std::string architecture_name;  // "LlamaForCausalLM", ...
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // bias on q/k/v_proj (Qwen2 always; Llama/Qwen3 attention_bias)
  bool o_bias = false;    // bias on o_proj (Llama/Qwen3 attention_bias)
  bool mlp_bias = false;  // Llama mlp_bias
  bool qk_norm = false;   // Qwen3: RMSNorm over head_dim on q and k before RoPE
  std::string dtype = "float32";  // the checkpoint's declared dtype (torch_dtype / dtype)
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id;
  std::optional<MoeConfig> moe;  // set for MoE architectures (Qwen3-MoE)
  std::optional<HybridConfig> hybrid;  // NemotronH: block types, Mamba-2 and its MoE (rms_norm_eps is
                                       // layer_norm_epsilon, intermediate_size the relu2 MLP width)
  nlohmann::json raw;  // the file as read, written back by save() with the dtype updated

  // True when decoder layer `layer` has a sparse MoE block instead of a dense MLP.
  bool is_moe_layer(int64_t layer) const;

  int64_t q_size() const { return num_heads * head_dim; }
  int64_t kv_size() const { return num_kv_heads * head_dim; }
};

// Parses an HF config.json object; `label` (the file) goes into every error message.
ModelConfig parse_config(const nlohmann::json& j, const std::string& label);
// NemotronHForCausalLM's keys (nemotron_h_config.cc), called by parse_config.
ModelConfig parse_nemotron_h_config(const nlohmann::json& j, const std::string& label);
// Parses JSON text that may hold Python's bare Infinity / -Infinity / NaN (transformers writes
// time_step_limit [0.0, Infinity]); they become the strings "@Infinity", "@-Infinity", "@NaN".
nlohmann::json parse_json_nonfinite(const std::string& text);
// dump(2) that writes those strings back as bare literals, so that transformers reads the file as before.
std::string dump_json_nonfinite(const nlohmann::json& j);
// Reads <dir>/config.json (or the given file).
ModelConfig load_config(const std::filesystem::path& dir_or_file);
// The config as it should be written next to weights of `dtype` ("float32", "bfloat16", ...).
nlohmann::json config_json_for_save(const ModelConfig& c, const std::string& dtype);

}  // namespace qad::model
