// ModelConfig: what qad needs from an HF config.json for LlamaForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM and Qwen3MoeForCausalLM, read from either the transformers 4.x keys (torch_dtype, rope_theta, rope_scaling)
// or the 5.x keys (dtype, rope_parameters). Anything else is refused with the list of what is supported.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace qad::model {

enum class Architecture { Llama, Qwen2, Qwen3, Qwen3Moe };

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
  std::optional<MoeConfig> moe;  // set for MoE architectures
  nlohmann::json raw;  // the file as read, written back by save() with the dtype updated

  // True when decoder layer `layer` has a sparse MoE block instead of a dense MLP.
  bool is_moe_layer(int64_t layer) const;

  int64_t q_size() const { return num_heads * head_dim; }
  int64_t kv_size() const { return num_kv_heads * head_dim; }
};

// Parses an HF config.json object; `label` (the file) goes into every error message.
ModelConfig parse_config(const nlohmann::json& j, const std::string& label);
// Reads <dir>/config.json (or the given file).
ModelConfig load_config(const std::filesystem::path& dir_or_file);
// The config as it should be written next to weights of `dtype` ("float32", "bfloat16", ...).
nlohmann::json config_json_for_save(const ModelConfig& c, const std::string& dtype);

}  // namespace qad::model
