// config.json parsing: the three families, both generations of key names, llama3 RoPE scaling, and the
// errors for everything unsupported.
#include <gtest/gtest.h>

#include "model/config.h"
#include "util/error.h"

namespace qad::model {
namespace {
using nlohmann::json;

json base(const std::string& arch) {
  return {{"architectures", {arch}}, {"vocab_size", 256}, {"hidden_size", 64}, {"intermediate_size", 128},
          {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6},
          {"max_position_embeddings", 512}};
}

std::string error_of(const json& j) {
  try {
    parse_config(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, LlamaWithOldKeysAndLlama3Scaling) {
  auto j = base("LlamaForCausalLM");
  j["torch_dtype"] = "bfloat16";
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 64}};
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = {128001, 128009};
  auto c = parse_config(j, "cfg.json");
  EXPECT_EQ(c.arch, Architecture::Llama);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128009}));
}

TEST(ModelConfig, NewKeysRopeParameters) {
  auto j = base("LlamaForCausalLM");
  j["dtype"] = "float32";
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 1234.0}, {"factor", 2.0}, {"low_freq_factor", 1.0},
                          {"high_freq_factor", 2.0}, {"original_max_position_embeddings", 32}};
  auto c = parse_config(j, "cfg.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 1234.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 99.0}};
  c = parse_config(j, "cfg.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 99.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
}

TEST(ModelConfig, Qwen2HasQkvBiasQwen3HasQkNormAndExplicitHeadDim) {
  auto q2 = parse_config(base("Qwen2ForCausalLM"), "cfg.json");
  EXPECT_TRUE(q2.qkv_bias);
  EXPECT_FALSE(q2.o_bias);
  EXPECT_FALSE(q2.qk_norm);
  auto j = base("Qwen3ForCausalLM");
  j["head_dim"] = 32;  // q_size 128 != hidden 64, as in real Qwen3
  auto q3 = parse_config(j, "cfg.json");
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_FALSE(q3.qkv_bias);
  EXPECT_EQ(q3.head_dim, 32);
  EXPECT_EQ(q3.q_size(), 128);
  EXPECT_EQ(q3.kv_size(), 64);
}

TEST(ModelConfig, UnsupportedInputsSayWhatIsSupported) {
  auto j = base("MistralForCausalLM");
  EXPECT_NE(error_of(j).find("architecture 'MistralForCausalLM' is not supported (supported: LlamaForCausalLM"),
            std::string::npos)
      << error_of(j);
  j = base("LlamaForCausalLM");
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(error_of(j).find("rope scaling type 'yarn' is not supported"), std::string::npos) << error_of(j);
  j = base("LlamaForCausalLM");
  j["hidden_act"] = "gelu";
  EXPECT_NE(error_of(j).find("hidden_act 'gelu' is not supported"), std::string::npos);
  j = base("Qwen2ForCausalLM");
  j["use_sliding_window"] = true;
  EXPECT_NE(error_of(j).find("sliding-window attention is not supported"), std::string::npos);
  j = base("LlamaForCausalLM");
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(j).find("not a multiple of num_key_value_heads 3"), std::string::npos);
  j = base("LlamaForCausalLM");
  j.erase("hidden_size");
  EXPECT_NE(error_of(j).find("cfg.json: \"hidden_size\" must be a positive integer"), std::string::npos);
}

}  // namespace
}  // namespace qad::model
