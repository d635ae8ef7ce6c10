// Parameter counts from the config (see param_count.h).
#include "model/param_count.h"

#include <algorithm>

namespace qad::model {
namespace {

void add(std::vector<LinearShape>& out, const std::string& name, int64_t in, int64_t out_features, bool bias) {
  out.push_back({name, in, out_features, bias, false});
}

void attention(std::vector<LinearShape>& out, const ModelConfig& c, const std::string& p) {
  add(out, p + ".q_proj", c.hidden_size, c.q_size(), c.qkv_bias);
  add(out, p + ".k_proj", c.hidden_size, c.kv_size(), c.qkv_bias);
  add(out, p + ".v_proj", c.hidden_size, c.kv_size(), c.qkv_bias);
  add(out, p + ".o_proj", c.q_size(), c.hidden_size, c.o_bias);
}

}  // namespace

std::vector<LinearShape> linear_shapes(const ModelConfig& c) {
  std::vector<LinearShape> out;
  const int64_t h = c.hidden_size;
  if (c.hybrid) {
    const auto& hy = *c.hybrid;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const std::string p = "backbone.layers." + std::to_string(l) + ".mixer";
      switch (hy.blocks.at(static_cast<size_t>(l))) {
        case BlockType::kMamba:
          add(out, p + ".in_proj", h, hy.mamba.in_proj_size(), hy.mamba.proj_bias);
          add(out, p + ".out_proj", hy.mamba.inner(), h, hy.mamba.proj_bias);
          break;
        case BlockType::kAttention:
          attention(out, c, p);
          break;
        case BlockType::kMlp:
          add(out, p + ".up_proj", h, c.intermediate_size, c.mlp_bias);
          add(out, p + ".down_proj", c.intermediate_size, h, c.mlp_bias);
          break;
        case BlockType::kMoe: {
          const auto& m = *hy.moe;
          add(out, p + ".gate", h, m.num_experts, false);
          for (int64_t e = 0; e < m.num_experts; ++e) {
            const std::string ep = p + ".experts." + std::to_string(e);
            add(out, ep + ".up_proj", h, m.intermediate_size, false);
            add(out, ep + ".down_proj", m.intermediate_size, h, false);
          }
          add(out, p + ".shared_experts.up_proj", h, m.shared_intermediate_size, c.mlp_bias);
          add(out, p + ".shared_experts.down_proj", m.shared_intermediate_size, h, c.mlp_bias);
          break;
        }
      }
    }
  } else {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l);
      attention(out, c, p + ".self_attn");
      if (c.is_moe_layer(l)) {
        const auto& m = *c.moe;
        add(out, p + ".mlp.gate", h, m.num_experts, false);
        for (int64_t e = 0; e < m.num_experts; ++e) {
          const std::string ep = p + ".mlp.experts." + std::to_string(e);
          add(out, ep + ".gate_proj", h, m.intermediate_size, false);
          add(out, ep + ".up_proj", h, m.intermediate_size, false);
          add(out, ep + ".down_proj", m.intermediate_size, h, false);
        }
      } else {
        add(out, p + ".mlp.gate_proj", h, c.intermediate_size, c.mlp_bias);
        add(out, p + ".mlp.up_proj", h, c.intermediate_size, c.mlp_bias);
        add(out, p + ".mlp.down_proj", c.intermediate_size, h, c.mlp_bias);
      }
    }
  }
  out.push_back({"lm_head", h, c.vocab_size, false, c.tie_word_embeddings});
  return out;
}

ParamCount count_parameters(const ModelConfig& c) {
  ParamCount n;
  auto tensor = [&](int64_t elements) {
    n.total += elements;
    n.largest = std::max(n.largest, elements);
  };
  const int64_t h = c.hidden_size;
  tensor(c.vocab_size * h);  // embeddings
  tensor(h);                 // final norm
  for (const auto& l : linear_shapes(c)) {
    if (!l.tied) {
      tensor(l.in_features * l.out_features);
      n.linear_weights += l.in_features * l.out_features;
    }
    if (l.bias) tensor(l.out_features);
    const bool router = l.name.ends_with(".mlp.gate") || l.name.ends_with(".mixer.gate");
    if (router) n.routers += l.in_features * l.out_features;
  }
  auto attention_norms = [&] {
    if (c.qk_norm) {
      tensor(c.head_dim);
      tensor(c.head_dim);
    }
  };
  if (c.hybrid) {
    const auto& hy = *c.hybrid;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      tensor(h);  // the block's norm
      switch (hy.blocks.at(static_cast<size_t>(l))) {
        case BlockType::kMamba: {
          const auto& m = hy.mamba;
          tensor(m.conv_dim() * m.conv_kernel);  // conv1d.weight [conv_dim, 1, kernel]
          if (m.conv_bias) tensor(m.conv_dim());
          for (int i = 0; i < 3; ++i) tensor(m.num_heads);  // dt_bias, A_log, D
          tensor(m.inner());  // the gated norm
          break;
        }
        case BlockType::kAttention:
          attention_norms();
          break;
        case BlockType::kMlp:
          break;
        case BlockType::kMoe:
          tensor(hy.moe->num_experts);  // gate.e_score_correction_bias
          n.frozen += hy.moe->num_experts;
          break;
      }
    }
  } else {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      tensor(h);  // input_layernorm
      tensor(h);  // post_attention_layernorm
      attention_norms();
    }
  }
  return n;
}

}  // namespace qad::model
