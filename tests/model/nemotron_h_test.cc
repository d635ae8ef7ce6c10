// NemotronH pieces against closed forms and plain references: the SSD scan (chunked vs the per-token recurrence in
// FP64, and the recurrence vs its geometric-series closed form), the gated RMSNorm, the Mamba-2 mixer continued
// from its state (conv + SSM) vs one pass, the group-limited sigmoid router vs a brute-force search, and the config
// in both block-type forms. nemotron_h_fixtures_test.cc compares whole models with transformers 5.17.
#include <cmath>

#include "common/test_util.h"
#include "model/causal_lm.h"
#include "model/generate.h"
#include "model/mamba2.h"
#include "model/nemotron_h.h"
#include "util/error.h"

namespace qad::model {
namespace {

double max_rel(const torch::Tensor& got, const torch::Tensor& want) {
  auto w = want.to(torch::kFloat64);
  return (got.to(torch::kFloat64) - w).abs().max().item<double>() / std::max(1.0, w.abs().max().item<double>());
}

struct ScanInputs {
  torch::Tensor x, dt, a, b, c, s0;
};

// Decays and inputs in the ranges of trained checkpoints: dt in (0.01, 0.5), A in [-8, -1].
ScanInputs scan_inputs(int64_t bs, int64_t t, int64_t h, int64_t p, int64_t n, uint64_t salt) {
  auto gen = qad::testing::seeded_generator(salt);
  auto o = torch::TensorOptions().dtype(torch::kFloat64);
  ScanInputs s;
  s.x = torch::randn({bs, t, h, p}, gen, o);
  s.dt = 0.01 + 0.49 * torch::rand({bs, t, h}, gen, o);
  s.a = -(1 + 7 * torch::rand({h}, gen, o));
  s.b = torch::randn({bs, t, h, n}, gen, o);
  s.c = torch::randn({bs, t, h, n}, gen, o);
  s.s0 = torch::randn({bs, h, p, n}, gen, o);
  return s;
}

TEST(SsdScan, SequentialRecurrenceEqualsItsClosedForm) {
  // One head, P = N = 1, x = B = C = 1, constant dt: S_t = dt (1 - r^(t+1)) / (1 - r) with r = exp(dt A).
  const int64_t t = 25;
  const double dt = 0.3, a = -2.0, r = std::exp(dt * a);
  auto o = torch::TensorOptions().dtype(torch::kFloat64);
  auto ones = torch::ones({1, t, 1, 1}, o);
  auto out = ssd_scan_sequential(ones, torch::full({1, t, 1}, dt, o), torch::full({1}, a, o), ones, ones);
  for (int64_t i = 0; i < t; ++i) {
    const double want = dt * (1 - std::pow(r, static_cast<double>(i + 1))) / (1 - r);
    EXPECT_NEAR(out.y[0][i][0][0].item<double>(), want, 1e-12) << "t " << i;
  }
  EXPECT_NEAR(out.final_state.item<double>(), dt * (1 - std::pow(r, t)) / (1 - r), 1e-12);
}

TEST(SsdScan, ChunkedEqualsSequentialAcrossChunksWithAndWithoutInitialState) {
  const auto s = scan_inputs(2, 37, 4, 3, 5, 1);
  for (int64_t chunk : {1, 5, 8, 37, 64}) {
    for (bool with_state : {false, true}) {
      const auto s0 = with_state ? s.s0 : torch::Tensor();
      auto want = ssd_scan_sequential(s.x, s.dt, s.a, s.b, s.c, s0);  // FP64
      auto got = ssd_scan_chunked(s.x, s.dt, s.a, s.b, s.c, chunk, s0);  // FP32
      EXPECT_EQ(got.y.scalar_type(), torch::kFloat32);
      EXPECT_LT(max_rel(got.y, want.y), 2e-5) << "chunk " << chunk << " state " << with_state;
      EXPECT_LT(max_rel(got.final_state, want.final_state), 2e-5) << "chunk " << chunk << " state " << with_state;
    }
  }
}

TEST(SsdScan, ContinuingFromTheFinalStateEqualsOnePass) {
  const auto s = scan_inputs(1, 30, 2, 4, 3, 2);
  auto whole = ssd_scan_chunked(s.x, s.dt, s.a, s.b, s.c, 8);
  auto first = ssd_scan_chunked(s.x.narrow(1, 0, 13), s.dt.narrow(1, 0, 13), s.a, s.b.narrow(1, 0, 13),
                                s.c.narrow(1, 0, 13), 8);
  auto rest = ssd_scan_chunked(s.x.narrow(1, 13, 17), s.dt.narrow(1, 13, 17), s.a, s.b.narrow(1, 13, 17),
                               s.c.narrow(1, 13, 17), 8, first.final_state);
  EXPECT_LT(max_rel(torch::cat({first.y, rest.y}, 1), whole.y), 1e-5);
  EXPECT_LT(max_rel(rest.final_state, whole.final_state), 1e-5);
}

TEST(SsdScan, RefusesMisshapenInputsNamingTheArgument) {
  const auto s = scan_inputs(1, 6, 2, 2, 2, 3);
  try {
    ssd_scan_chunked(s.x, s.dt.narrow(1, 0, 5), s.a, s.b, s.c, 4);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dt must be [1, 6, 2]"), std::string::npos) << e.what();
  }
}

TEST(GatedRmsNorm, GatesBeforeNormalisingEachGroup) {
  auto gen = qad::testing::seeded_generator(4);
  auto x = torch::randn({2, 3, 8}, gen), gate = torch::randn({2, 3, 8}, gen), w = torch::randn({8}, gen);
  auto got = gated_rms_norm(x, gate, w, 4, 1e-5);
  auto xa = x.accessor<float, 3>(), ga = gate.accessor<float, 3>();
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 3; ++j) {
      for (int g = 0; g < 2; ++g) {
        double h[4], ms = 0;
        for (int k = 0; k < 4; ++k) {
          const double gv = ga[i][j][g * 4 + k];
          h[k] = xa[i][j][g * 4 + k] * gv / (1 + std::exp(-gv));
          ms += h[k] * h[k] / 4;
        }
        for (int k = 0; k < 4; ++k) {
          const double want = w[g * 4 + k].item<double>() * h[k] / std::sqrt(ms + 1e-5);
          EXPECT_NEAR(got[i][j][g * 4 + k].item<double>(), want, 1e-5 * std::max(1.0, std::abs(want)));
        }
      }
    }
  }
}

nlohmann::json tiny_config(const std::string& pattern) {
  return nlohmann::json{{"architectures", {"NemotronHForCausalLM"}}, {"model_type", "nemotron_h"},
                        {"vocab_size", 64}, {"hidden_size", 32}, {"num_attention_heads", 4},
                        {"num_key_value_heads", 2}, {"head_dim", 8}, {"intermediate_size", 48},
                        {"mlp_hidden_act", "relu2"}, {"layer_norm_epsilon", 1e-5}, {"mamba_num_heads", 4},
                        {"mamba_head_dim", 8}, {"ssm_state_size", 8}, {"n_groups", 2}, {"conv_kernel", 4},
                        {"chunk_size", 8}, {"n_routed_experts", 8}, {"num_experts_per_tok", 3},
                        {"moe_intermediate_size", 16}, {"moe_shared_expert_intermediate_size", 24},
                        {"n_group", 4}, {"topk_group", 2}, {"routed_scaling_factor", 2.5},
                        {"hybrid_override_pattern", pattern}};
}

// Random weights of the sizes the tests need: A_log and dt_bias as the fixtures draw them.
void randomize(torch::nn::Module& m, torch::Generator& gen) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) {
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
}

TEST(NemotronHConfig, BothBlockTypeFormsGiveTheSameBlocks) {
  auto a = parse_config(tiny_config("M*M-E"), "a.json");
  auto j = tiny_config("");
  j.erase("hybrid_override_pattern");
  j["layers_block_type"] = {"linear_attention", "full_attention", "mamba", "mlp", "moe"};  // old and new names
  auto b = parse_config(j, "b.json");
  ASSERT_TRUE(a.hybrid && b.hybrid);
  const std::vector<BlockType> want = {BlockType::kMamba, BlockType::kAttention, BlockType::kMamba, BlockType::kMlp,
                                       BlockType::kMoe};
  EXPECT_EQ(a.hybrid->blocks, want);
  EXPECT_EQ(b.hybrid->blocks, want);
  EXPECT_EQ(a.num_layers, 5);
  EXPECT_EQ(a.arch, Architecture::NemotronH);
  EXPECT_EQ(a.hybrid->mamba.in_proj_size(), 32 + (32 + 2 * 2 * 8) + 4);
  EXPECT_TRUE(std::isinf(a.hybrid->mamba.dt_max));
  EXPECT_DOUBLE_EQ(a.hybrid->mamba.dt_min, 0.001);  // NemotronHConfig's time_step_min
  ASSERT_TRUE(a.hybrid->moe.has_value());
  EXPECT_EQ(a.hybrid->moe->n_group, 4);
  EXPECT_DOUBLE_EQ(a.hybrid->moe->routed_scaling_factor, 2.5);
  EXPECT_TRUE(a.hybrid->moe->norm_topk_prob);  // NemotronHConfig's default
}

TEST(NemotronHConfig, ReadsPythonInfinityAndWritesItBack) {
  const std::string text = R"({"time_step_limit": [0.0, Infinity], "name": "Infinity", "x": -Infinity})";
  auto j = parse_json_nonfinite(text);
  EXPECT_EQ(j["time_step_limit"][1], "@Infinity");
  EXPECT_EQ(j["x"], "@-Infinity");
  EXPECT_EQ(j["name"], "Infinity");
  const auto back = dump_json_nonfinite(j);
  EXPECT_NE(back.find("-Infinity\n"), std::string::npos) << back;
  EXPECT_NE(back.find("\"name\": \"Infinity\""), std::string::npos) << back;  // a string value stays a string
  // transformers 5.17 writes {"__float__": "Infinity"}; its mixer clamps dt at time_step_min, not time_step_limit.
  auto c = tiny_config("M");
  c["time_step_limit"] = {0.0, {{"__float__", "Infinity"}}};
  c["time_step_min"] = 0.002;
  const auto m = parse_config(c, "c.json").hybrid->mamba;
  EXPECT_DOUBLE_EQ(m.dt_min, 0.002);
  EXPECT_TRUE(std::isinf(m.dt_max));
  c["time_step_limit"] = {0.0, "@Infinity"};
  EXPECT_NO_THROW(parse_config(c, "c.json"));
  c["time_step_limit"] = {0.0, "big"};
  EXPECT_THROW(parse_config(c, "c.json"), Error);
}

std::string config_error(const nlohmann::json& j) {
  try {
    parse_config(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(NemotronHConfig, RefusalsNameTheKey) {
  EXPECT_NE(config_error(tiny_config("M*X")).find("character 'X'"), std::string::npos);
  auto j = tiny_config("M*");
  j["layers_block_type"] = {"linear_attention", "mlp"};
  EXPECT_NE(config_error(j).find("describe different layers"), std::string::npos);
  j = tiny_config("ME");
  j["moe_latent_size"] = 16;
  EXPECT_NE(config_error(j).find("moe_latent_size"), std::string::npos);
  j = tiny_config("M");
  j["mlp_hidden_act"] = "silu";
  EXPECT_NE(config_error(j).find("mlp_hidden_act"), std::string::npos);
}

TEST(NemotronHRouter, GroupLimitedTopKEqualsBruteForce) {
  NemotronHMoeConfig o;
  o.num_experts = 8;
  o.top_k = 3;
  o.n_group = 4;
  o.topk_group = 2;
  o.routed_scaling_factor = 2.5;
  o.norm_topk_prob = true;
  auto gen = qad::testing::seeded_generator(5);
  auto logits = torch::randn({50, 8}, gen);
  auto bias = 0.1 * torch::randn({8}, gen);
  auto r = group_topk_route(logits, bias, o);
  auto s = torch::sigmoid(logits);
  for (int64_t i = 0; i < 50; ++i) {
    std::vector<double> choice(8);
    for (int e = 0; e < 8; ++e) choice[e] = s[i][e].item<double>() + bias[e].item<double>();
    // Groups of 2: the group score is the sum of both; keep the best 2 groups.
    std::vector<std::pair<double, int>> groups;
    for (int g = 0; g < 4; ++g) groups.emplace_back(choice[2 * g] + choice[2 * g + 1], g);
    std::sort(groups.rbegin(), groups.rend());
    std::vector<std::pair<double, int>> cands;
    for (int q = 0; q < 2; ++q) {
      for (int e : {2 * groups[q].second, 2 * groups[q].second + 1}) cands.emplace_back(choice[e], e);
    }
    std::sort(cands.rbegin(), cands.rend());
    std::vector<int> want = {cands[0].second, cands[1].second, cands[2].second};
    std::sort(want.begin(), want.end());
    double sum = 0;
    for (int e : want) sum += s[i][e].item<double>();
    for (int q = 0; q < 3; ++q) {
      EXPECT_EQ(r.experts[i][q].item<int64_t>(), want[q]) << "token " << i;
      EXPECT_NEAR(r.weights[i][q].item<double>(), 2.5 * s[i][want[q]].item<double>() / sum, 1e-6) << "token " << i;
    }
  }
}

TEST(Mamba2Mixer, ContinuingFromConvAndSsmStateEqualsOnePass) {
  auto c = parse_config(tiny_config("M"), "m.json");
  Mamba2Mixer mixer(c, "backbone.layers.0.mixer");
  auto gen = qad::testing::seeded_generator(6);
  randomize(*mixer, gen);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({2, 21, 32}, gen);
  auto whole = mixer->forward(x);
  // A prompt of 11 tokens (crossing a chunk of 8), then one token at a time, then a block of 3.
  MambaState st;
  std::vector<torch::Tensor> parts = {mixer->forward(x.narrow(1, 0, 11), {}, &st)};
  for (int64_t i = 11; i < 18; ++i) parts.push_back(mixer->forward(x.narrow(1, i, 1), {}, &st));
  parts.push_back(mixer->forward(x.narrow(1, 18, 3), {}, &st));
  EXPECT_LT(max_rel(torch::cat(parts, 1), whole), 1e-5);
  // A prompt shorter than the conv kernel pads the conv state with zeros on the left.
  MambaState st2;
  auto short_parts = std::vector<torch::Tensor>{mixer->forward(x.narrow(1, 0, 2), {}, &st2)};
  EXPECT_EQ(st2.conv.size(-1), 4);
  for (int64_t i = 2; i < 6; ++i) short_parts.push_back(mixer->forward(x.narrow(1, i, 1), {}, &st2));
  EXPECT_LT(max_rel(torch::cat(short_parts, 1), whole.narrow(1, 0, 6)), 1e-5);
}

TEST(NemotronH, CachedDecodingEqualsFullRecompute) {
  CausalLM lm(parse_config(tiny_config("M*-ME*M"), "g.json"));
  auto gen = qad::testing::seeded_generator(7);
  randomize(*lm, gen);
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(0, 64, {2, 19}, gen);
  auto full = lm->forward(ids).logits;
  // A prompt of 11 (crossing a Mamba chunk of 8), then single tokens, then a block of 4 (chunked prefill).
  KVCache cache(lm->config(), 2, 19, torch::kCPU, torch::kFloat32);
  MambaCache mamba;
  ForwardOptions o;
  o.cache = &cache;
  o.mamba_cache = &mamba;
  std::vector<torch::Tensor> parts = {lm->forward(ids.narrow(1, 0, 11), o).logits};
  for (int64_t i = 11; i < 15; ++i) parts.push_back(lm->forward(ids.narrow(1, i, 1), o).logits);
  parts.push_back(lm->forward(ids.narrow(1, 15, 4), o).logits);
  EXPECT_LT(max_rel(torch::cat(parts, 1), full), 1e-5);
  EXPECT_EQ(cache.length, 19);
}

TEST(NemotronH, GenerateWithCachesEqualsGreedyRecompute) {
  CausalLM lm(parse_config(tiny_config("M*ME"), "g.json"));
  auto gen = qad::testing::seeded_generator(8);
  randomize(*lm, gen);
  const std::vector<std::vector<int64_t>> prompts = {{3, 14, 15, 9, 2, 6, 5, 35, 8, 9, 7}, {1, 2}};
  GenerateOptions g;
  g.max_new_tokens = 9;
  auto res = generate(lm, prompts, g);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto ids = torch::tensor(prompts[i], torch::kLong).unsqueeze(0);
    std::vector<int64_t> want;
    for (int step = 0; step < 9; ++step) {
      const int64_t next = lm->forward(ids).logits[0][-1].argmax().item<int64_t>();
      want.push_back(next);
      ids = torch::cat({ids, torch::full({1, 1}, next, torch::kLong)}, 1);
    }
    EXPECT_EQ(res.new_ids[i], want) << "prompt " << i;
  }
}

TEST(NemotronH, DecodingStateErrorsAreReadable) {
  CausalLM lm(parse_config(tiny_config("M*"), "g.json"));
  auto gen = qad::testing::seeded_generator(9);
  randomize(*lm, gen);
  KVCache cache(lm->config(), 1, 8, torch::kCPU, torch::kFloat32);
  ForwardOptions o;
  o.cache = &cache;  // without a MambaCache
  try {
    lm->forward(torch::zeros({1, 3}, torch::kLong), o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MambaCache"), std::string::npos) << e.what();
  }
}

// Activation checkpointing recomputes every block type (Mamba-2, attention, relu2 MLP, MoE) in backward: the same
// loss and the same gradient for every parameter as the plain backward.
TEST(NemotronH, CheckpointedBlocksGiveTheSameGradients) {
  CausalLM lm(parse_config(tiny_config("M*-ME*M"), "g.json"));
  auto gen = qad::testing::seeded_generator(10);
  randomize(*lm, gen);
  auto ids = torch::randint(0, 64, {2, 19}, gen);
  auto grads = [&](bool checkpoint) {
    lm->zero_grad();
    ForwardOptions o;
    o.checkpoint_layers = checkpoint;
    auto loss = lm->forward(ids, o).logits.pow(2).mean();
    loss.backward();
    std::vector<torch::Tensor> g = {loss.detach()};
    for (const auto& [name, p] : lm->hf_tensors()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    return g;
  };
  auto plain = grads(false), ckpt = grads(true);
  auto named = lm->hf_tensors();
  EXPECT_TRUE(torch::equal(plain[0], ckpt[0]));
  int nonzero = 0;
  for (size_t i = 0; i < named.size(); ++i) {
    EXPECT_TRUE(torch::allclose(plain[i + 1], ckpt[i + 1], 1e-5, 1e-7)) << named[i].first;
    nonzero += plain[i + 1].abs().max().item<double>() > 0;
  }
  EXPECT_GT(nonzero, static_cast<int>(named.size()) / 2);  // the comparison is not of zeros
  // With a cache it is refused (decoding does not train).
  KVCache cache(lm->config(), 2, 19, torch::kCPU, torch::kFloat32);
  MambaCache mamba;
  ForwardOptions o;
  o.checkpoint_layers = true;
  o.cache = &cache;
  o.mamba_cache = &mamba;
  EXPECT_THROW(lm->forward(ids, o), Error);
}

TEST(NemotronH, HfNamesOfEveryBlockType) {
  CausalLM lm(parse_config(tiny_config("M*-E"), "n.json"));
  std::set<std::string> names;
  for (const auto& [n, t] : lm->hf_tensors()) names.insert(n);
  for (const char* want :
       {"backbone.embeddings.weight", "backbone.norm_f.weight", "lm_head.weight", "backbone.layers.0.norm.weight",
        "backbone.layers.0.mixer.in_proj.weight", "backbone.layers.0.mixer.conv1d.weight", "backbone.layers.0.mixer.conv1d.bias",
        "backbone.layers.0.mixer.dt_bias", "backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D",
        "backbone.layers.0.mixer.norm.weight", "backbone.layers.0.mixer.out_proj.weight",
        "backbone.layers.1.mixer.q_proj.weight", "backbone.layers.1.mixer.o_proj.weight",
        "backbone.layers.2.mixer.up_proj.weight", "backbone.layers.2.mixer.down_proj.weight",
        "backbone.layers.3.mixer.gate.weight", "backbone.layers.3.mixer.gate.e_score_correction_bias",
        "backbone.layers.3.mixer.experts.7.up_proj.weight", "backbone.layers.3.mixer.experts.0.down_proj.weight",
        "backbone.layers.3.mixer.shared_experts.up_proj.weight"}) {
    EXPECT_TRUE(names.count(want)) << want;
  }
  EXPECT_EQ(names.size(), 3u + 1 + 8 + 1 + 4 + 1 + 2 + 1 + 2 + 8 * 2 + 2);
  // linears(): the Mamba projections, attention, MLP, router, experts and shared expert, lm_head.
  EXPECT_EQ(lm->linears().size(), 2u + 4 + 2 + 1 + 16 + 2 + 1);
}

}  // namespace
}  // namespace qad::model
