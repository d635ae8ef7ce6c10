// NVFP4 on NemotronH (hybrid Mamba-2 / attention / MLP / MoE): ModelOpt's defaults (every Linear but the routers;
// the Mamba conv1d is no Linear), the QAD paper's Nemotron 3 Nano recipe (attention blocks and the Mamba block
// before each kept in high precision: quant.keep_blocks, recipes/nemotron3_nano_qad.yaml), and export -> import
// bit-exact on a random tiny model of every block type.
#include <gtest/gtest.h>

#include <set>

#include "model/nemotron_h.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"
#include "util/atomic_file.h"

namespace qad::testing {
namespace {
namespace fs = std::filesystem;

nlohmann::json tiny_config(const std::string& pattern) {
  return nlohmann::json{{"architectures", {"NemotronHForCausalLM"}}, {"model_type", "nemotron_h"},
                        {"vocab_size", 64}, {"hidden_size", 32}, {"num_attention_heads", 4},
                        {"num_key_value_heads", 2}, {"head_dim", 8}, {"intermediate_size", 48},
                        {"mlp_hidden_act", "relu2"}, {"layer_norm_epsilon", 1e-5}, {"mamba_num_heads", 4},
                        {"mamba_head_dim", 8}, {"ssm_state_size", 8}, {"n_groups", 2}, {"conv_kernel", 4},
                        {"chunk_size", 8}, {"n_routed_experts", 4}, {"num_experts_per_tok", 2},
                        {"moe_intermediate_size", 16}, {"moe_shared_expert_intermediate_size", 32},
                        {"n_group", 2}, {"topk_group", 1}, {"routed_scaling_factor", 2.5},
                        {"hybrid_override_pattern", pattern}};
}

std::vector<int64_t> kept(const std::string& pattern, const std::string& mode) {
  return quant::kept_blocks(model::parse_config(tiny_config(pattern), "k.json"), mode);
}

TEST(NemotronHQuant, KeptBlocksAreTheAttentionBlocksAndTheMambaBlockBeforeEach) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(kept("M-M*EM*M*", "none"), V{});
  EXPECT_EQ(kept("M-M*EM*M*", "attention"), (V{3, 6, 8}));
  EXPECT_EQ(kept("M-M*EM*M*", "attention_and_preceding_mamba"), (V{2, 3, 5, 6, 7, 8}));
  EXPECT_EQ(kept("ME*", "attention_and_preceding_mamba"), (V{0, 2}));   // MoE in between is skipped
  EXPECT_EQ(kept("M**", "attention_and_preceding_mamba"), (V{0, 1, 2}));  // another attention block stops the search
  EXPECT_EQ(kept("*-M", "attention_and_preceding_mamba"), (V{0}));
  expect_error_containing([] { quant::quant_config_from_json({{"keep_blocks", "mamba"}}); }, {"keep_blocks", "mamba"});
}

// A random tiny NemotronH of every block type, saved as an HF checkpoint (the export's source directory).
model::CausalLM tiny_model(const fs::path& dir) {
  model::CausalLM lm(model::parse_config(tiny_config("M*-EM*E"), "tiny.json"));
  auto gen = seeded_generator(31);
  torch::NoGradGuard no_grad;
  for (auto& p : lm->named_parameters()) {
    auto& t = p.value();
    if (p.key().ends_with("A_log")) {
      t.copy_(torch::log(1 + 7 * torch::rand(t.sizes(), gen)));
    } else if (p.key().ends_with("dt_bias")) {
      t.copy_(-4 + 2 * torch::rand(t.sizes(), gen));
    } else if (p.key().ends_with("norm.weight") || p.key().ends_with("norm_f.weight")) {
      t.copy_(1 + 0.1 * torch::randn(t.sizes(), gen));
    } else {
      t.copy_(0.2 * torch::randn(t.sizes(), gen));
    }
  }
  lm->save(dir);
  return model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
}

TEST(NemotronHQuant, DefaultsQuantizeEveryLinearButTheRouters) {
  const auto dir = scratch_dir("qad_nemotronh_quant", "defaults");
  auto lm = tiny_model(dir);
  auto names = quant::apply_nvfp4(lm, {});
  std::set<std::string> q(names.begin(), names.end());
  for (const auto& l : lm->linears()) {
    const bool router = l->name().ends_with("mixer.gate");
    EXPECT_EQ(q.count(l->name()) == 1, !router && l->name() != "lm_head") << l->name();
  }
  EXPECT_TRUE(q.count("backbone.layers.0.mixer.in_proj") && q.count("backbone.layers.0.mixer.out_proj"));
  EXPECT_TRUE(q.count("backbone.layers.3.mixer.experts.3.up_proj") && q.count("backbone.layers.3.mixer.shared_experts.down_proj"));
  quant::QuantConfig kv;
  kv.kv_cache = quant::KvCacheQuant::kFp8;
  expect_error_containing([&] { quant::apply_nvfp4(lm, kv); }, {"kv_cache fp8", "NemotronHForCausalLM"});
  remove_tree(dir);
}

TEST(NemotronHQuant, TheNemotron3NanoRecipeKeepsAttentionAndThePrecedingMambaInHighPrecision) {
  const auto dir = scratch_dir("qad_nemotronh_quant", "recipe");
  auto lm = tiny_model(dir);
  // The shipped recipe's quant options.
  const auto text = read_file(source_dir() / "recipes/nemotron3_nano_qad.yaml");
  ASSERT_NE(text.find("keep_blocks: attention_and_preceding_mamba"), std::string::npos);
  auto cfg = quant::quant_config_from_json({{"keep_blocks", "attention_and_preceding_mamba"}});
  auto names = quant::apply_nvfp4(lm, cfg);
  std::set<std::string> q(names.begin(), names.end());
  // "M*-EM*E": attention 1 and 5, the Mamba blocks before them 0 and 4.
  for (const auto& l : lm->linears()) {
    const auto& n = l->name();
    const bool kept_block = n.starts_with("backbone.layers.0.") || n.starts_with("backbone.layers.1.") ||
                            n.starts_with("backbone.layers.4.") || n.starts_with("backbone.layers.5.");
    const bool want = !kept_block && !n.ends_with("mixer.gate") && n != "lm_head";
    EXPECT_EQ(q.count(n) == 1, want) << n;
  }
  remove_tree(dir);
}

TEST(NemotronHQuant, ExportThenImportIsBitExact) {
  const auto dir = scratch_dir("qad_nemotronh_quant", "src");
  const auto out = scratch_dir("qad_nemotronh_quant", "nvfp4");
  auto lm = tiny_model(dir);
  quant::QuantConfig cfg;
  quant::apply_nvfp4(lm, cfg);
  quant::calibrate(lm, random_batches(lm->config().vocab_size, 4, 2, 19, 7), cfg);
  auto ids = torch::randint(lm->config().vocab_size, {2, 21}, seeded_generator(17), torch::kLong);
  torch::NoGradGuard no_grad;
  auto want = lm->forward(ids).logits;
  quant::export_nvfp4(lm, out, dir);
  ASSERT_TRUE(quant::is_nvfp4_checkpoint(out));
  auto back = quant::load_nvfp4(out, torch::kCPU, torch::kFloat32);
  EXPECT_EQ(quant::quantized_modules(back), quant::quantized_modules(lm));
  EXPECT_TRUE(same_bits(back->forward(ids).logits, want));
  auto la = lm->linears(), lb = back->linears();
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    auto* h = quant::nvfp4_hook(la[i]);
    EXPECT_TRUE(same_bits(lb[i]->weight, h ? h->weight(la[i]->weight) : la[i]->weight)) << la[i]->name();
  }
  // The Mamba parameters and the router's correction bias travel unchanged.
  auto ta = lm->hf_tensors(), tb = back->hf_tensors();
  for (size_t i = 0; i < ta.size(); ++i) {
    const auto& n = ta[i].first;
    if (n.ends_with("A_log") || n.ends_with("dt_bias") || n.ends_with(".D") || n.ends_with("conv1d.weight") ||
        n.ends_with("e_score_correction_bias")) {
      EXPECT_TRUE(same_bits(tb[i].second, ta[i].second)) << n;
    }
  }
  remove_tree(dir);
  remove_tree(out);
}

}  // namespace
}  // namespace qad::testing
