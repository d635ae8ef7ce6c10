// config.json parsing for the supported decoder families; see docs/model.md for the key table.
#include "model/config.h"

#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::model {
namespace {

using nlohmann::json;
constexpr const char* kSupported =
    "supported: LlamaForCausalLM (rope_scaling none or llama3), Qwen2ForCausalLM, Qwen3ForCausalLM, "
    "Qwen3MoeForCausalLM (softmax top-k router), NemotronHForCausalLM; "
    "hidden_act silu; full attention (no sliding window)";

int64_t get_int(const json& j, const char* key, const std::string& label) {
  auto it = j.find(key);
  QAD_CHECK(it != j.end() && it->is_number_integer() && it->get<int64_t>() > 0,
            "{}: \"{}\" must be a positive integer", label, key);
  return it->get<int64_t>();
}

double get_double(const json& j, const char* key, double fallback, const std::string& label) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  QAD_CHECK(it->is_number(), "{}: \"{}\" must be a number", label, key);
  return it->get<double>();
}

bool get_bool(const json& j, const char* key, bool fallback, const std::string& label) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  QAD_CHECK(it->is_boolean(), "{}: \"{}\" must be true or false", label, key);
  return it->get<bool>();
}

std::vector<int64_t> get_ids(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int64_t>()};
  std::vector<int64_t> out;
  if (it->is_array()) {
    for (const auto& v : *it) {
      if (v.is_number_integer()) out.push_back(v.get<int64_t>());
    }
  }
  return out;
}

// rope_theta and the scaling block, from either rope_parameters (5.x) or rope_theta + rope_scaling (4.x).
void parse_rope(const json& j, ModelConfig& c, const std::string& label) {
  json scaling;
  if (auto rp = j.find("rope_parameters"); rp != j.end() && rp->is_object()) {
    c.rope_theta = get_double(*rp, "rope_theta", get_double(j, "rope_theta", 10000.0, label), label);
    scaling = *rp;
  } else {
    c.rope_theta = get_double(j, "rope_theta", 10000.0, label);
    if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
      QAD_CHECK(rs->is_object(), "{}: \"rope_scaling\" must be an object or null", label);
      scaling = *rs;
    }
  }
  if (scaling.is_null()) return;
  std::string type = "default";
  if (scaling.contains("rope_type")) {
    type = scaling["rope_type"].get<std::string>();
  } else if (scaling.contains("type")) {
    type = scaling["type"].get<std::string>();
  }
  if (type == "default") return;
  QAD_CHECK(type == "llama3", "{}: rope scaling type '{}' is not supported (supported: none/default, llama3)", label,
            type);
  QAD_CHECK(c.arch == Architecture::Llama, "{}: llama3 rope scaling is only supported for LlamaForCausalLM", label);
  c.rope_scaling.type = RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = get_double(scaling, "factor", 8.0, label);
  c.rope_scaling.low_freq_factor = get_double(scaling, "low_freq_factor", 1.0, label);
  c.rope_scaling.high_freq_factor = get_double(scaling, "high_freq_factor", 4.0, label);
  c.rope_scaling.original_max_position_embeddings = get_int(scaling, "original_max_position_embeddings", label);
  QAD_CHECK(c.rope_scaling.high_freq_factor != c.rope_scaling.low_freq_factor,
            "{}: llama3 rope scaling needs high_freq_factor != low_freq_factor", label);
}

// Routing options of other MoE families that change the math; each is refused by name unless it holds its
// neutral value, so that a config qad would compute differently from transformers never loads silently.
void refuse_unsupported_moe_keys(const json& j, const std::string& label) {
  auto refuse = [&](const char* key, const std::string& why) {
    fail("{}: \"{}\" = {} is not supported for Qwen3MoeForCausalLM ({}; qad implements softmax top-k routing "
         "without shared experts)", label, key, j[key].dump(), why);
  };
  auto present = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  for (const char* key : {"router_type", "topk_method", "scoring_func"}) {
    if (!present(key)) continue;
    const auto v = j[key].is_string() ? j[key].get<std::string>() : std::string();
    if (v != "softmax" && v != "greedy") refuse(key, "router type");
  }
  for (const char* key : {"n_shared_experts", "shared_expert_intermediate_size", "first_k_dense_replace",
                          "moe_layer_freq"}) {
    if (present(key) && !(j[key].is_number() && j[key].get<double>() == 0)) refuse(key, "not a Qwen3-MoE option");
  }
  for (const char* key : {"n_group", "topk_group"}) {
    if (present(key) && !(j[key].is_number() && j[key].get<double>() <= 1)) refuse(key, "group-limited routing");
  }
  if (present("routed_scaling_factor") && !(j["routed_scaling_factor"].is_number() &&
                                            j["routed_scaling_factor"].get<double>() == 1.0)) {
    refuse("routed_scaling_factor", "scaled routing weights");
  }
  if (present("router_jitter_noise") && !(j["router_jitter_noise"].is_number() &&
                                          j["router_jitter_noise"].get<double>() == 0.0)) {
    refuse("router_jitter_noise", "router noise");
  }
}

MoeConfig parse_moe(const json& j, const ModelConfig& c, const std::string& label) {
  refuse_unsupported_moe_keys(j, label);
  MoeConfig m;
  const bool old_key = j.contains("num_experts") && !j["num_experts"].is_null();
  const bool new_key = j.contains("num_local_experts") && !j["num_local_experts"].is_null();
  QAD_CHECK(old_key || new_key, "{}: \"num_experts\" (or \"num_local_experts\") is missing; a Qwen3MoeForCausalLM "
            "needs it", label);
  m.num_experts = get_int(j, old_key ? "num_experts" : "num_local_experts", label);
  if (old_key && new_key) {
    QAD_CHECK(j["num_experts"] == j["num_local_experts"], "{}: \"num_experts\" {} and \"num_local_experts\" {} "
              "disagree", label, j["num_experts"].dump(), j["num_local_experts"].dump());
  }
  m.top_k = get_int(j, "num_experts_per_tok", label);
  QAD_CHECK(m.top_k <= m.num_experts, "{}: \"num_experts_per_tok\" {} exceeds \"num_experts\" {}", label, m.top_k,
            m.num_experts);
  m.intermediate_size = get_int(j, "moe_intermediate_size", label);
  m.norm_topk_prob = get_bool(j, "norm_topk_prob", false, label);
  m.decoder_sparse_step = j.contains("decoder_sparse_step") && !j["decoder_sparse_step"].is_null()
                              ? get_int(j, "decoder_sparse_step", label)
                              : 1;
  if (auto it = j.find("mlp_only_layers"); it != j.end() && !it->is_null()) {
    QAD_CHECK(it->is_array(), "{}: \"mlp_only_layers\" must be a list of layer indices", label);
    for (const auto& v : *it) {
      QAD_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < c.num_layers,
                "{}: \"mlp_only_layers\" entry {} is not a layer index in [0, {})", label, v.dump(), c.num_layers);
      m.mlp_only_layers.push_back(v.get<int64_t>());
    }
  }
  return m;
}

}  // namespace

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (!moe) return false;
  for (int64_t l : moe->mlp_only_layers) {
    if (l == layer) return false;
  }
  return moe->num_experts > 0 && (layer + 1) % moe->decoder_sparse_step == 0;
}

namespace {
ModelConfig parse_config_fields(const json& j, const std::string& label);
}  // namespace

// A value of the wrong JSON type deep in the config (found by fuzzing) is a user's file error, not an internal one.
ModelConfig parse_config(const json& j, const std::string& label) {
  try {
    return parse_config_fields(j, label);
  } catch (const json::exception& e) {
    QAD_CHECK(false, "{}: a value has the wrong JSON type ({}); compare the file with the model's published "
              "config.json", label, e.what());
  }
  return {};
}

namespace {
ModelConfig parse_config_fields(const json& j, const std::string& label) {
  QAD_CHECK(j.is_object(), "{}: config must be a JSON object", label);
  ModelConfig c;
  c.raw = j;
  auto archs = j.find("architectures");
  QAD_CHECK(archs != j.end() && archs->is_array() && archs->size() == 1 && (*archs)[0].is_string(),
            "{}: \"architectures\" must list exactly one architecture ({})", label, kSupported);
  c.architecture_name = (*archs)[0].get<std::string>();
  if (c.architecture_name == "NemotronHForCausalLM") return parse_nemotron_h_config(j, label);
  if (c.architecture_name == "LlamaForCausalLM") {
    c.arch = Architecture::Llama;
  } else if (c.architecture_name == "Qwen2ForCausalLM") {
    c.arch = Architecture::Qwen2;
  } else if (c.architecture_name == "Qwen3ForCausalLM") {
    c.arch = Architecture::Qwen3;
  } else if (c.architecture_name == "Qwen3MoeForCausalLM") {
    c.arch = Architecture::Qwen3Moe;
  } else {
    fail("{}: architecture '{}' is not supported ({})", label, c.architecture_name, kSupported);
  }
  c.vocab_size = get_int(j, "vocab_size", label);
  c.hidden_size = get_int(j, "hidden_size", label);
  c.intermediate_size = get_int(j, "intermediate_size", label);
  c.num_layers = get_int(j, "num_hidden_layers", label);
  c.num_heads = get_int(j, "num_attention_heads", label);
  c.num_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                       ? get_int(j, "num_key_value_heads", label)
                       : c.num_heads;
  QAD_CHECK(c.num_heads % c.num_kv_heads == 0,
            "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", label, c.num_heads,
            c.num_kv_heads);
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = get_int(j, "head_dim", label);
  } else {
    QAD_CHECK(c.hidden_size % c.num_heads == 0, "{}: hidden_size {} is not a multiple of num_attention_heads {}",
              label, c.hidden_size, c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  QAD_CHECK(c.head_dim % 2 == 0, "{}: head_dim {} must be even for RoPE", label, c.head_dim);
  c.max_position_embeddings = j.contains("max_position_embeddings") ? get_int(j, "max_position_embeddings", label) : 0;
  c.rms_norm_eps = get_double(j, "rms_norm_eps", 1e-6, label);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, label);

  const std::string act = j.value("hidden_act", std::string("silu"));
  QAD_CHECK(act == "silu", "{}: hidden_act '{}' is not supported ({})", label, act, kSupported);
  QAD_CHECK(!get_bool(j, "use_sliding_window", false, label),
            "{}: use_sliding_window is true; sliding-window attention is not supported ({})", label, kSupported);
  if (auto lt = j.find("layer_types"); lt != j.end() && lt->is_array()) {
    for (const auto& t : *lt) {
      QAD_CHECK(t == "full_attention", "{}: layer type {} is not supported ({})", label, t.dump(), kSupported);
    }
  }
  const bool attention_bias = get_bool(j, "attention_bias", false, label);
  switch (c.arch) {
    case Architecture::Llama:
      c.qkv_bias = c.o_bias = attention_bias;
      c.mlp_bias = get_bool(j, "mlp_bias", false, label);
      break;
    case Architecture::Qwen2:
      c.qkv_bias = true;  // Qwen2Attention hard-codes bias on q/k/v and none on o
      break;
    case Architecture::Qwen3:
      c.qkv_bias = c.o_bias = attention_bias;
      c.qk_norm = true;
      break;
    case Architecture::Qwen3Moe:
      c.qkv_bias = c.o_bias = attention_bias;
      c.qk_norm = true;
      c.moe = parse_moe(j, c, label);
      break;
    case Architecture::NemotronH:  // parse_nemotron_h_config, returned above
      break;
  }
  parse_rope(j, c, label);
  if (j.contains("dtype") && j["dtype"].is_string()) {
    c.dtype = j["dtype"].get<std::string>();
  } else if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) {
    c.dtype = j["torch_dtype"].get<std::string>();
  }
  c.eos_token_ids = get_ids(j, "eos_token_id");
  if (auto b = get_ids(j, "bos_token_id"); !b.empty()) c.bos_token_id = b[0];
  return c;
}
}  // namespace

ModelConfig load_config(const std::filesystem::path& dir_or_file) {
  QAD_CHECK(std::filesystem::exists(dir_or_file), "{}: no such model directory (expected config.json and safetensors)",
            dir_or_file.string());
  const auto path = std::filesystem::is_directory(dir_or_file) ? dir_or_file / "config.json" : dir_or_file;
  json j;
  try {
    j = parse_json_nonfinite(read_file(path));
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", path.string(), std::string(e.what()).substr(0, 160));
  }
  return parse_config(j, path.string());
}

namespace {
constexpr const char* kNonFinite[] = {"-Infinity", "Infinity", "NaN"};
// Marks a string made of a bare literal, so that a real string "Infinity" in the file stays a string when saved.
constexpr char kNonFiniteMark = '@';
}  // namespace

json parse_json_nonfinite(const std::string& text) {
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      out += ch;
      if (ch == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (ch == '"') {
        in_string = false;
      }
      continue;
    }
    if (ch == '"') {
      in_string = true;
      out += ch;
      continue;
    }
    bool replaced = false;
    for (const char* lit : kNonFinite) {
      const std::string_view l(lit);
      if (text.compare(i, l.size(), l) == 0) {
        out += '"';
        out += kNonFiniteMark;
        out += l;
        out += '"';
        i += l.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += ch;
  }
  return json::parse(out);
}

std::string dump_json_nonfinite(const json& j) {
  std::string s = j.dump(2);
  for (const char* lit : kNonFinite) {
    const std::string quoted = std::string("\"") + kNonFiniteMark + lit + "\"";
    for (size_t p = s.find(quoted); p != std::string::npos; p = s.find(quoted, p)) {
      // Only a whole JSON value: the quoted literal follows ':' / '[' / ',' (after spaces), not text in a string.
      size_t q = p;
      while (q > 0 && (s[q - 1] == ' ' || s[q - 1] == '\n')) --q;
      if (q > 0 && (s[q - 1] == ':' || s[q - 1] == '[' || s[q - 1] == ',')) {
        s.replace(p, quoted.size(), lit);
        p += std::string_view(lit).size();
      } else {
        p += quoted.size();
      }
    }
  }
  return s;
}

json config_json_for_save(const ModelConfig& c, const std::string& dtype) {
  json j = c.raw;
  // Update whichever keys the file has (some carry both for older loaders); transformers reads either.
  if (j.contains("torch_dtype")) j["torch_dtype"] = dtype;
  if (j.contains("dtype") || !j.contains("torch_dtype")) j["dtype"] = dtype;
  return j;
}

}  // namespace qad::model
