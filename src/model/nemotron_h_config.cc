// NemotronHForCausalLM's config.json: the per-layer block types from either form (hybrid_override_pattern, the
// form NVIDIA's checkpoints ship, or transformers 5's layers_block_type), the Mamba-2 mixer, the relu2 MLP and the
// MoE block. Key names and defaults follow transformers' NemotronHConfig, legacy mamba_* spellings included.
#include <algorithm>
#include <limits>

#include "model/config.h"
#include "util/error.h"

namespace qad::model {
namespace {

using nlohmann::json;

bool present(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

// The first of `keys` that the file has (transformers 5 names first, then the legacy spelling).
const char* pick(const json& j, std::initializer_list<const char*> keys) {
  for (const char* k : keys) {
    if (present(j, k)) return k;
  }
  return nullptr;
}

int64_t positive(const json& j, std::initializer_list<const char*> keys, std::optional<int64_t> fallback,
                 const std::string& label) {
  const char* k = pick(j, keys);
  if (k == nullptr) {
    QAD_CHECK(fallback.has_value(), "{}: \"{}\" is missing; NemotronHForCausalLM needs it", label, *keys.begin());
    return *fallback;
  }
  QAD_CHECK(j[k].is_number_integer() && j[k].get<int64_t>() > 0, "{}: \"{}\" must be a positive integer, got {}",
            label, k, j[k].dump());
  return j[k].get<int64_t>();
}

bool flag(const json& j, std::initializer_list<const char*> keys, bool fallback, const std::string& label) {
  const char* k = pick(j, keys);
  if (k == nullptr) return fallback;
  QAD_CHECK(j[k].is_boolean(), "{}: \"{}\" must be true or false, got {}", label, k, j[k].dump());
  return j[k].get<bool>();
}

// A number, or one of the strings parse_json_nonfinite makes of Python's Infinity literals (or written as strings).
double number(const json& v_in, const std::string& what, const std::string& label) {
  // transformers 5.17 writes non-finite floats as {"__float__": "Infinity"}.
  const json& v = v_in.is_object() && v_in.contains("__float__") ? v_in["__float__"] : v_in;
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    if (s == "@Infinity" || s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "@-Infinity" || s == "-Infinity") return -std::numeric_limits<double>::infinity();
  }
  fail("{}: {} must be a number, got {}", label, what, v.dump());
}

double real(const json& j, const char* key, double fallback, const std::string& label) {
  return present(j, key) ? number(j[key], std::string("\"") + key + "\"", label) : fallback;
}

BlockType block_from_name(const std::string& name, const std::string& label) {
  if (name == "linear_attention" || name == "mamba") return BlockType::kMamba;
  if (name == "full_attention" || name == "attention") return BlockType::kAttention;
  if (name == "mlp") return BlockType::kMlp;
  if (name == "moe") return BlockType::kMoe;
  fail("{}: layers_block_type entry '{}' is not a NemotronH block type (linear_attention/mamba, "
       "full_attention/attention, mlp, moe)", label, name);
}

BlockType block_from_char(char ch, const std::string& label) {
  switch (ch) {
    case 'M': return BlockType::kMamba;
    case '*': return BlockType::kAttention;
    case '-': return BlockType::kMlp;
    case 'E': return BlockType::kMoe;
    default:
      fail("{}: hybrid_override_pattern character '{}' is not a NemotronH block (M Mamba-2, * attention, - MLP, "
           "E MoE)", label, std::string(1, ch));
  }
}

std::vector<BlockType> parse_blocks(const json& j, const std::string& label) {
  std::optional<std::vector<BlockType>> from_list, from_pattern;
  for (const char* key : {"layers_block_type", "layer_types"}) {
    if (!present(j, key)) continue;
    QAD_CHECK(j[key].is_array(), "{}: \"{}\" must be a list of block type names", label, key);
    std::vector<BlockType> v;
    for (const auto& t : j[key]) {
      QAD_CHECK(t.is_string(), "{}: \"{}\" entry {} is not a string", label, key, t.dump());
      v.push_back(block_from_name(t.get<std::string>(), label));
    }
    QAD_CHECK(!from_list || *from_list == v, "{}: \"layers_block_type\" and \"layer_types\" disagree", label);
    from_list = v;
  }
  if (present(j, "hybrid_override_pattern")) {
    QAD_CHECK(j["hybrid_override_pattern"].is_string(), "{}: \"hybrid_override_pattern\" must be a string", label);
    std::vector<BlockType> v;
    for (char ch : j["hybrid_override_pattern"].get<std::string>()) v.push_back(block_from_char(ch, label));
    from_pattern = v;
  }
  QAD_CHECK(from_list || from_pattern, "{}: NemotronHForCausalLM needs \"hybrid_override_pattern\" or "
            "\"layers_block_type\" (the block type of every layer)", label);
  QAD_CHECK(!(from_list && from_pattern) || *from_list == *from_pattern,
            "{}: \"hybrid_override_pattern\" and \"layers_block_type\" describe different layers", label);
  // transformers' NemotronHConfig: layers_block_type wins over the pattern (it only reads the pattern when the
  // list is absent) and the layer count is its length, whatever num_hidden_layers says.
  auto blocks = from_list ? *from_list : *from_pattern;
  QAD_CHECK(!blocks.empty(), "{}: the NemotronH block list is empty", label);
  return blocks;
}

void refuse(const json& j, const char* key, bool neutral, const std::string& why, const std::string& label) {
  if (present(j, key) && !neutral) {
    fail("{}: \"{}\" = {} is not supported for NemotronHForCausalLM ({})", label, key, j[key].dump(), why);
  }
}

}  // namespace

ModelConfig parse_nemotron_h_config(const json& j, const std::string& label) {
  ModelConfig c;
  c.raw = j;
  c.arch = Architecture::NemotronH;
  c.architecture_name = "NemotronHForCausalLM";
  HybridConfig h;
  h.blocks = parse_blocks(j, label);
  const auto has = [&](BlockType t) { return std::find(h.blocks.begin(), h.blocks.end(), t) != h.blocks.end(); };

  c.vocab_size = positive(j, {"vocab_size"}, std::nullopt, label);
  c.hidden_size = positive(j, {"hidden_size"}, std::nullopt, label);
  c.num_layers = static_cast<int64_t>(h.blocks.size());
  c.rms_norm_eps = real(j, "layer_norm_epsilon", 1e-5, label);
  c.tie_word_embeddings = flag(j, {"tie_word_embeddings"}, false, label);
  c.max_position_embeddings = present(j, "max_position_embeddings")
                                  ? positive(j, {"max_position_embeddings"}, std::nullopt, label) : 0;
  // Attention: NemotronHAttention has no RoPE and no bias (transformers builds q/k/v/o without one whatever
  // attention_bias says, so a checkpoint with attention biases would not load there either).
  c.num_heads = positive(j, {"num_attention_heads"}, std::nullopt, label);
  c.num_kv_heads = positive(j, {"num_key_value_heads"}, c.num_heads, label);
  QAD_CHECK(c.num_heads % c.num_kv_heads == 0, "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}",
            label, c.num_heads, c.num_kv_heads);
  c.head_dim = positive(j, {"head_dim", "attention_head_dim"}, 128, label);  // NemotronHConfig's default is 128
  refuse(j, "attention_bias", !j.value("attention_bias", false), "transformers' NemotronHAttention has no bias",
         label);
  refuse(j, "sliding_window", false, "sliding-window attention", label);
  // relu2 MLP blocks and shared experts.
  const std::string act = j.value("mlp_hidden_act", std::string("relu2"));
  QAD_CHECK(act == "relu2", "{}: mlp_hidden_act '{}' is not supported (NemotronH: relu2)", label, act);
  c.mlp_bias = flag(j, {"mlp_bias"}, false, label);
  c.intermediate_size = has(BlockType::kMlp) ? positive(j, {"intermediate_size"}, std::nullopt, label)
                                             : (present(j, "intermediate_size")
                                                    ? positive(j, {"intermediate_size"}, std::nullopt, label) : 0);
  // Mamba-2.
  auto& m = h.mamba;
  const bool mamba = has(BlockType::kMamba);
  const std::optional<int64_t> none;
  m.num_heads = positive(j, {"mamba_num_heads"}, mamba ? none : 1, label);
  m.head_dim = positive(j, {"mamba_head_dim"}, mamba ? none : 1, label);
  m.state_size = positive(j, {"ssm_state_size"}, mamba ? none : 1, label);
  m.n_groups = positive(j, {"n_groups", "mamba_n_groups"}, 8, label);
  m.conv_kernel = positive(j, {"conv_kernel", "mamba_d_conv"}, 4, label);
  m.chunk_size = positive(j, {"chunk_size", "mamba_chunk_size"}, 128, label);
  m.conv_bias = flag(j, {"use_conv_bias", "mamba_conv_bias"}, true, label);
  m.proj_bias = flag(j, {"use_bias"}, false, label);
  // transformers 5.17's mixer clamps softplus(dt + dt_bias) to (time_step_min, inf) when scanning a sequence
  // (its kernels get the same dt_limit) and reads time_step_limit nowhere; older releases clamped to time_step_limit.
  m.dt_min = real(j, "time_step_min", 0.001, label);
  m.dt_max = std::numeric_limits<double>::infinity();
  if (const char* k = pick(j, {"time_step_limit", "mamba_dt_limit"})) {  // validated, not used (as in 5.17)
    QAD_CHECK(j[k].is_array() && j[k].size() == 2, "{}: \"{}\" must be [min, max], got {}", label, k, j[k].dump());
    number(j[k][0], std::string("\"") + k + "\"[0]", label);
    number(j[k][1], std::string("\"") + k + "\"[1]", label);
  }
  if (mamba) {
    QAD_CHECK(m.num_heads % m.n_groups == 0, "{}: mamba_num_heads {} is not a multiple of n_groups {}", label,
              m.num_heads, m.n_groups);
    QAD_CHECK(m.inner() % m.n_groups == 0, "{}: the Mamba inner size {} is not a multiple of n_groups {}", label,
              m.inner(), m.n_groups);
    const std::string mact = j.value("mamba_hidden_act", std::string("silu"));
    QAD_CHECK(mact == "silu" || mact == "swish", "{}: mamba_hidden_act '{}' is not supported (silu)", label, mact);
  }
  // MoE.
  if (has(BlockType::kMoe)) {
    NemotronHMoeConfig e;
    e.num_experts = positive(j, {"n_routed_experts", "num_local_experts"}, std::nullopt, label);
    e.top_k = positive(j, {"num_experts_per_tok"}, std::nullopt, label);
    e.intermediate_size = positive(j, {"moe_intermediate_size"}, std::nullopt, label);
    e.shared_intermediate_size = positive(j, {"moe_shared_expert_intermediate_size"}, std::nullopt, label);
    e.n_group = positive(j, {"n_group"}, 1, label);
    e.topk_group = positive(j, {"topk_group"}, 1, label);
    e.routed_scaling_factor = real(j, "routed_scaling_factor", 1.0, label);
    e.norm_topk_prob = flag(j, {"norm_topk_prob"}, true, label);
    QAD_CHECK(e.num_experts % e.n_group == 0 && e.topk_group <= e.n_group,
              "{}: n_routed_experts {} must split into n_group {} groups, topk_group {} <= n_group", label,
              e.num_experts, e.n_group, e.topk_group);
    QAD_CHECK(e.n_group == 1 || e.num_experts / e.n_group >= 2, "{}: group scores sum each group's top 2 experts; "
              "n_group {} leaves fewer than 2 experts per group", label, e.n_group);
    QAD_CHECK(e.top_k <= e.topk_group * (e.num_experts / e.n_group),
              "{}: num_experts_per_tok {} exceeds the experts of topk_group {} groups", label, e.top_k, e.topk_group);
    refuse(j, "moe_latent_size", false, "latent expert projections (Nemotron 3 Super) are not implemented yet",
           label);
    h.moe = e;
  }
  // num_nextn_predict_layers: multi-token-prediction layers ("mtp.*" tensors) are skipped, as transformers does.
  if (j.contains("dtype") && j["dtype"].is_string()) {
    c.dtype = j["dtype"].get<std::string>();
  } else if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) {
    c.dtype = j["torch_dtype"].get<std::string>();
  }
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    if (j["eos_token_id"].is_number_integer()) c.eos_token_ids = {j["eos_token_id"].get<int64_t>()};
    if (j["eos_token_id"].is_array()) {
      for (const auto& v : j["eos_token_id"]) {
        if (v.is_number_integer()) c.eos_token_ids.push_back(v.get<int64_t>());
      }
    }
  }
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) c.bos_token_id = j["bos_token_id"].get<int64_t>();
  c.hybrid = std::move(h);
  return c;
}

}  // namespace qad::model
