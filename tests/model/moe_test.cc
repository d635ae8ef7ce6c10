// Qwen3-MoE against transformers 5.17 (tests/fixtures/models/qwen3_moe_*, tools/make_moe_fixtures.py) and
// the MoE machinery against plain references: router probabilities, greedy KV-cache generation, the
// load-balancing loss, expert dispatch versus a loop over tokens, the fused on-disk expert layout, config
// keys and the one-line errors for unsupported MoE options. (Logits and every layer's hidden state are
// checked for all fixtures, these included, by fixtures_test.cc.)
#include <unistd.h>

#include <algorithm>

#include "common/test_util.h"
#include "io/safetensors_torch.h"
#include "model/causal_lm.h"
#include "model/generate.h"
#include "model/moe_block.h"
#include "model/moe_dispatch.h"
#include "model/router.h"
#include "util/error.h"
#include "util/remove_tree.h"

namespace qad::model {
namespace {
namespace fs = std::filesystem;

constexpr double kFp32RelTol = 1e-4;

const char* const kFixtures[] = {"qwen3_moe_sparse_step", "qwen3_moe_mlp_only_per_expert"};

fs::path fixture(const std::string& name) { return qad::testing::source_dir() / "tests/fixtures/models" / name; }

std::map<std::string, torch::Tensor> reference(const fs::path& dir) {
  auto list = io::read_tensors(dir / "reference.safetensors");
  return {list.begin(), list.end()};
}

double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  auto w = want.to(torch::kFloat64);
  const double scale = std::max(1.0, w.abs().max().item<double>());
  return (got.to(torch::kCPU, torch::kFloat64) - w).abs().max().item<double>() / scale;
}

TEST(Qwen3Moe, ConfigReadsBothKeyGenerationsAndTheSparseLayers) {
  auto a = load_config(fixture("qwen3_moe_sparse_step"));  // written by transformers 5.17: num_local_experts
  ASSERT_TRUE(a.moe.has_value());
  EXPECT_EQ(a.arch, Architecture::Qwen3Moe);
  EXPECT_EQ(a.moe->num_experts, 8);
  EXPECT_EQ(a.moe->top_k, 2);
  EXPECT_FALSE(a.moe->norm_topk_prob);
  EXPECT_TRUE(a.qk_norm);
  std::vector<bool> sparse;
  for (int64_t l = 0; l < a.num_layers; ++l) sparse.push_back(a.is_moe_layer(l));
  EXPECT_EQ(sparse, (std::vector<bool>{false, true, false, true}));  // decoder_sparse_step 2

  auto b = load_config(fixture("qwen3_moe_mlp_only_per_expert"));  // 4.x spelling: num_experts, rope_theta
  ASSERT_TRUE(b.moe.has_value());
  EXPECT_EQ(b.moe->num_experts, 6);
  EXPECT_EQ(b.moe->top_k, 3);
  EXPECT_TRUE(b.moe->norm_topk_prob);
  EXPECT_DOUBLE_EQ(b.rope_theta, 10000.0);
  sparse.clear();
  for (int64_t l = 0; l < b.num_layers; ++l) sparse.push_back(b.is_moe_layer(l));
  EXPECT_EQ(sparse, (std::vector<bool>{true, false, true}));  // mlp_only_layers [1]
}

std::string config_error(nlohmann::json j) {
  try {
    parse_config(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Qwen3Moe, UnsupportedOptionsFailWithOneLineNamingTheKey) {
  auto j = load_config(fixture("qwen3_moe_sparse_step")).raw;
  EXPECT_EQ(config_error(j), "");
  const std::vector<std::pair<std::string, nlohmann::json>> cases = {
      {"scoring_func", "sigmoid"}, {"router_type", "expert_choice"}, {"topk_method", "noaux_tc"},
      {"n_shared_experts", 1},     {"shared_expert_intermediate_size", 64}, {"n_group", 8},
      {"routed_scaling_factor", 2.5}, {"first_k_dense_replace", 1}, {"router_jitter_noise", 0.1}};
  for (const auto& [key, value] : cases) {
    auto bad = j;
    bad[key] = value;
    const auto e = config_error(bad);
    EXPECT_NE(e.find("cfg.json: \"" + key + "\" = "), std::string::npos) << e;
    EXPECT_NE(e.find("not supported for Qwen3MoeForCausalLM"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
  auto neutral = j;  // neutral values of the same keys load (DeepSeek-style configs spell them out)
  neutral["scoring_func"] = "softmax";
  neutral["n_shared_experts"] = 0;
  neutral["routed_scaling_factor"] = 1.0;
  EXPECT_EQ(config_error(neutral), "");
  auto missing = j;
  missing.erase("num_local_experts");
  EXPECT_NE(config_error(missing).find("\"num_experts\" (or \"num_local_experts\") is missing"), std::string::npos);
  auto too_many = j;
  too_many["num_experts_per_tok"] = 9;
  EXPECT_NE(config_error(too_many).find("\"num_experts_per_tok\" 9 exceeds"), std::string::npos);
  auto bad_layer = j;
  bad_layer["mlp_only_layers"] = {7};
  EXPECT_NE(config_error(bad_layer).find("\"mlp_only_layers\" entry 7"), std::string::npos);
  auto other = j;
  other["architectures"] = {"DeepseekV3ForCausalLM"};
  EXPECT_NE(config_error(other).find("architecture 'DeepseekV3ForCausalLM' is not supported"), std::string::npos);
}

TEST(Qwen3Moe, RouterProbabilitiesAndLoadBalancingLossMatchTransformers) {
  for (const char* name : kFixtures) {
    SCOPED_TRACE(name);
    const auto dir = fixture(name);
    auto ref = reference(dir);
    auto lm = CausalLM::load(dir, torch::kCPU, torch::kFloat32);
    torch::NoGradGuard g;
    ForwardOptions o;
    o.return_router_logits = true;
    auto out = lm->forward(ref.at("input_ids"), o);
    std::vector<torch::Tensor> logits;
    int checked = 0;
    for (const auto& [layer, l] : out.router_logits) {
      auto it = ref.find("router." + layer);
      ASSERT_NE(it, ref.end()) << "reference has no router." << layer;
      EXPECT_LE(rel_err(torch::softmax(l, -1), it->second), kFp32RelTol) << layer;
      logits.push_back(l);
      ++checked;
    }
    int sparse = 0;
    for (int64_t l = 0; l < lm->config().num_layers; ++l) sparse += lm->config().is_moe_layer(l);
    EXPECT_EQ(checked, sparse);
    const auto& m = *lm->config().moe;
    const double aux = load_balancing_loss(logits, m.num_experts, m.top_k).item<double>();
    EXPECT_NEAR(aux, ref.at("aux_loss").item<double>(), 1e-5 * ref.at("aux_loss").item<double>());
  }
}

TEST(Qwen3Moe, GreedyGenerationWithKvCacheEqualsTransformers) {
  for (const char* name : kFixtures) {
    SCOPED_TRACE(name);
    const auto dir = fixture(name);
    auto ref = reference(dir);
    auto lm = CausalLM::load(dir, torch::kCPU, torch::kFloat32);
    auto prompt = ref.at("generate.prompt"), expected = ref.at("generate.output");
    std::vector<std::vector<int64_t>> prompts;
    for (int64_t i = 0; i < prompt.size(0); ++i) {
      auto row = prompt[i].contiguous();
      prompts.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
    }
    GenerateOptions go;
    go.max_new_tokens = expected.size(1) - prompt.size(1);
    auto got = generate(lm, prompts, go);
    for (int64_t i = 0; i < prompt.size(0); ++i) {
      auto want = expected[i].narrow(0, prompt.size(1), go.max_new_tokens).contiguous();
      EXPECT_EQ(got.new_ids[static_cast<size_t>(i)],
                std::vector<int64_t>(want.data_ptr<int64_t>(), want.data_ptr<int64_t>() + want.numel()))
          << "prompt " << i;
    }
  }
}

// The MoE block against the definition, one token at a time: sum over the token's top-k experts of
// weight * expert(x). Padding tokens (mask 0) must come out zero and reach no expert.
TEST(MoeBlock, GroupedExpertsEqualALoopOverTokensAndSkipPadding) {
  auto c = load_config(fixture("qwen3_moe_mlp_only_per_expert"));
  MoeBlock block(c, "model.layers.0.mlp", 0);
  auto gen = qad::testing::seeded_generator();
  torch::NoGradGuard g;
  for (auto& p : block->parameters()) p.copy_(torch::randn(p.sizes(), gen) * 0.3);
  const int64_t b = 3, t = 7, h = c.hidden_size;
  auto x = torch::randn({b, t, h}, gen);
  auto mask = torch::ones({b, t}, torch::kLong);
  mask.index_put_({0, torch::indexing::Slice(0, 3)}, 0);  // left padding on the first row
  AttentionContext ctx;
  ctx.token_mask = mask;
  std::vector<std::pair<int64_t, torch::Tensor>> logits;
  ctx.router_logits = &logits;
  auto y = block->forward(x, ctx);
  ASSERT_EQ(logits.size(), 1u);
  auto flat = x.reshape({-1, h});
  auto flat_mask = mask.reshape({-1});
  for (int64_t n = 0; n < b * t; ++n) {
    torch::Tensor want = torch::zeros({h});
    if (flat_mask[n].item<int64_t>() != 0) {
      auto probs = torch::softmax(torch::mv(block->gate->weight, flat[n]), -1);
      auto [top, idx] = probs.topk(c.moe->top_k);
      top = top / top.sum();  // norm_topk_prob is true in this fixture
      for (int64_t j = 0; j < c.moe->top_k; ++j) {
        auto& e = block->expert_list[static_cast<size_t>(idx[j].item<int64_t>())];
        want = want + top[j] * e->forward(flat[n].unsqueeze(0)).squeeze(0);
      }
    }
    EXPECT_TRUE(torch::allclose(y.reshape({-1, h})[n], want, 1e-5, 1e-6)) << "token " << n;
  }
}

TEST(MoeDispatch, RowsGroupedByExpertInTokenOrderAndCombinedBack) {
  auto experts = torch::tensor({2, 0, 1, 2, 0, 1}, torch::kLong).view({3, 2});  // 3 tokens, k = 2
  auto keep = torch::tensor({1, 0, 1}, torch::kBool);
  auto d = dispatch_by_expert(experts, 4, keep);
  EXPECT_EQ(d.counts, (std::vector<int64_t>{2, 1, 1, 0}));  // token 1 (experts 1, 2) dropped
  auto slots = d.slot_of_row.contiguous();
  EXPECT_EQ(std::vector<int64_t>(slots.data_ptr<int64_t>(), slots.data_ptr<int64_t>() + slots.numel()),
            (std::vector<int64_t>{1, 4, 5, 0}));  // expert 0: tokens 0 and 2; expert 1: token 2; expert 2: token 0
  auto tokens = d.token_of_row.contiguous();
  EXPECT_EQ(std::vector<int64_t>(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.numel()),
            (std::vector<int64_t>{0, 2, 2, 0}));
  auto rows = torch::tensor({1.0f, 20.0f, 300.0f, 4000.0f}).unsqueeze(1);
  auto out = combine_by_token(rows, d);
  EXPECT_TRUE(torch::equal(out.squeeze(1), torch::tensor({4000.0f + 1.0f, 0.0f, 20.0f + 300.0f})));
}

TEST(Router, TopkOverlapCountsSharedExperts) {
  auto a = torch::tensor({0, 1, 2, 3, 4, 5}, torch::kLong).view({3, 2});
  auto b = torch::tensor({1, 0, 2, 7, 6, 5}, torch::kLong).view({3, 2});
  EXPECT_DOUBLE_EQ(topk_overlap(a, b).item<double>(), (1.0 + 0.5 + 0.5) / 3);
  EXPECT_DOUBLE_EQ(topk_overlap(a, b, torch::tensor({1, 0, 0}, torch::kBool)).item<double>(), 1.0);
}

// Checkpoints that store each layer's experts stacked (transformers 5.x in memory: gate_up_proj [E, 2I, H],
// down_proj [E, H, I]) load to the same model as the per-expert layout.
TEST(Qwen3Moe, FusedExpertTensorsLoadLikePerExpertOnes) {
  const auto src = fixture("qwen3_moe_sparse_step");
  auto lm = CausalLM::load(src, torch::kCPU, torch::kFloat32);
  const auto& m = *lm->config().moe;
  io::NamedTensors fused;
  for (const auto& [name, t] : lm->hf_tensors()) {
    if (name.find(".mlp.experts.") == std::string::npos) fused.emplace_back(name, t);
  }
  for (const auto& layer : lm->model->layer_list) {
    if (!layer->moe) continue;
    std::vector<torch::Tensor> gate_up, down;
    for (const auto& e : layer->moe->expert_list) {
      gate_up.push_back(torch::cat({e->gate_proj->weight, e->up_proj->weight}, 0));
      down.push_back(e->down_proj->weight);
    }
    const auto prefix = layer->moe->gate->name().substr(0, layer->moe->gate->name().size() - 4);  // "...mlp."
    fused.emplace_back(prefix + "experts.gate_up_proj", torch::stack(gate_up));
    fused.emplace_back(prefix + "experts.down_proj", torch::stack(down));
    EXPECT_EQ(fused.back().second.sizes(), torch::IntArrayRef({m.num_experts, lm->config().hidden_size, m.intermediate_size}));
  }
  const auto dir = fs::temp_directory_path() / ("qad_moe_fused_" + std::to_string(::getpid()));
  qad::remove_tree(dir);
  fs::create_directories(dir);
  fs::copy_file(src / "config.json", dir / "config.json");
  io::write_tensors(dir / "model.safetensors", fused);
  auto back = CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  auto a = lm->hf_tensors(), b = back->hf_tensors();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(qad::testing::same_bits(a[i].second, b[i].second)) << a[i].first;
  }
  qad::remove_tree(dir);
}

TEST(Qwen3Moe, SaveWritesThePerExpertLayoutAndLoadsBackBitwise) {
  auto lm = CausalLM::load(fixture("qwen3_moe_mlp_only_per_expert"), torch::kCPU, torch::kFloat32);
  const auto dir = fs::temp_directory_path() / ("qad_moe_save_" + std::to_string(::getpid()));
  qad::remove_tree(dir);
  lm->save(dir);
  auto names = io::Checkpoint::open(dir).names();
  EXPECT_TRUE(std::count(names.begin(), names.end(), "model.layers.2.mlp.experts.5.down_proj.weight"));
  EXPECT_TRUE(std::count(names.begin(), names.end(), "model.layers.0.mlp.gate.weight"));
  EXPECT_TRUE(std::count(names.begin(), names.end(), "model.layers.1.mlp.up_proj.weight"));
  auto back = CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  auto ids = reference(fixture("qwen3_moe_mlp_only_per_expert")).at("input_ids");
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(lm->forward(ids).logits, back->forward(ids).logits));
  qad::remove_tree(dir);
}

TEST(Qwen3Moe, GradientsReachRouterAndRoutedExpertsAlsoUnderCheckpointing) {
  auto lm = CausalLM::load(fixture("qwen3_moe_sparse_step"), torch::kCPU, torch::kFloat32);
  auto ids = reference(fixture("qwen3_moe_sparse_step")).at("input_ids");
  auto grads = [&](bool checkpoint) {
    lm->zero_grad();
    ForwardOptions o;
    o.checkpoint_layers = checkpoint;
    lm->forward(ids, o).logits.pow(2).mean().backward();
    std::vector<torch::Tensor> g;
    for (const auto& [name, p] : lm->hf_tensors()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    return g;
  };
  auto plain = grads(false), ckpt = grads(true);
  auto named = lm->hf_tensors();
  for (size_t i = 0; i < named.size(); ++i) {
    EXPECT_TRUE(torch::allclose(plain[i], ckpt[i], 1e-5, 1e-7)) << named[i].first;
    if (named[i].first == "model.layers.1.mlp.gate.weight") {
      EXPECT_GT(plain[i].abs().max().item<double>(), 0.0);
    }
  }
}

}  // namespace
}  // namespace qad::model
