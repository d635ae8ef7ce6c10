// Decoder mechanics on random tiny models of each family: KV-cache steps equal the full forward, padding
// does not change real tokens, activation checkpointing gives identical gradients, save -> load is
// bitwise (sharded and not), quant hooks reach every Linear, sampling filters work.
#include <unistd.h>

#include <fstream>

#include "util/remove_tree.h"
#include "common/test_util.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "model/hidden_rows.h"
#include "model/generate.h"
#include "util/atomic_file.h"

namespace qad::model {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

json tiny_config(const std::string& arch, bool tied) {
  json j = {{"architectures", {arch}}, {"vocab_size", 96}, {"hidden_size", 32}, {"intermediate_size", 48},
            {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6},
            {"max_position_embeddings", 256}, {"tie_word_embeddings", tied}, {"dtype", "float32"}};
  if (arch == "Qwen3ForCausalLM") j["head_dim"] = 16;
  if (arch == "LlamaForCausalLM") {
    j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 10000.0}, {"factor", 4.0},
                            {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 16}};
  }
  return j;
}

CausalLM random_model(const json& j, uint64_t salt) {
  CausalLM lm(parse_config(j, "tiny"));
  auto gen = qad::testing::seeded_generator(salt);
  torch::NoGradGuard g;
  for (auto& [name, p] : lm->hf_tensors()) {
    auto r = torch::randn(p.sizes(), gen);
    p.copy_(name.ends_with("norm.weight") ? 1 + 0.1 * r : 0.2 * r);
  }
  return lm;
}

const std::vector<std::pair<std::string, bool>> kFamilies = {
    {"LlamaForCausalLM", false}, {"LlamaForCausalLM", true}, {"Qwen2ForCausalLM", false}, {"Qwen3ForCausalLM", true}};

fs::path temp_dir(const std::string& name) {
  return fs::temp_directory_path() / ("qad_model_test_" + std::to_string(::getpid()) + "_" + name);
}

TEST(Decoder, Llama3RopeFrequenciesMatchTheClosedForm) {
  // theta 1e4, head_dim 8: inv_freq 1, 0.1, 0.01, 0.001, wavelengths 2*pi/f. original 16, low 1, high 4:
  // wavelengths above 16 are divided by factor 4; 6.28 lies between 4 and 16 and is smoothed with
  // s = (16 / 6.28 - 1) / 3.
  auto c = parse_config(tiny_config("LlamaForCausalLM", false), "tiny");
  ASSERT_EQ(c.head_dim, 8);
  auto f = rope_inv_freq(c).to(torch::kFloat64);
  const double s = (16.0 / (2 * M_PI) - 1.0) / 3.0;
  const double want[] = {(1 - s) * 1.0 / 4 + s * 1.0, 0.1 / 4, 0.01 / 4, 0.001 / 4};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i].item<double>(), want[i], 1e-7 * want[i]) << i;
  c.rope_scaling = {};
  auto plain = rope_inv_freq(c).to(torch::kFloat64);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(plain[i].item<double>(), std::pow(10000.0, -i / 4.0), 1e-7) << i;
}

TEST(Decoder, CacheStepsEqualTheFullForward) {
  for (const auto& [arch, tied] : kFamilies) {
    SCOPED_TRACE(arch);
    auto lm = random_model(tiny_config(arch, tied), 1);
    auto gen = qad::testing::seeded_generator(2);
    auto ids = torch::randint(0, 96, {2, 24}, gen);
    torch::NoGradGuard g;
    auto full = lm->forward(ids).logits;
    KVCache cache(lm->config(), 2, 24, torch::kCPU, torch::kFloat32);
    ForwardOptions o;
    o.cache = &cache;
    auto first = lm->forward(ids.narrow(1, 0, 10), o).logits;  // prefill 10, then 4 + 1 x 10
    auto second = lm->forward(ids.narrow(1, 10, 4), o).logits;
    std::vector<torch::Tensor> parts = {first, second};
    for (int64_t t = 14; t < 24; ++t) parts.push_back(lm->forward(ids.narrow(1, t, 1), o).logits);
    EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), full, 1e-5, 1e-5));
    EXPECT_EQ(cache.length, 24);
  }
}

TEST(Decoder, LeftPaddingLeavesRealTokensUnchanged) {
  for (const auto& [arch, tied] : kFamilies) {
    SCOPED_TRACE(arch);
    auto lm = random_model(tiny_config(arch, tied), 3);
    auto gen = qad::testing::seeded_generator(4);
    auto ids = torch::randint(0, 96, {1, 9}, gen);
    torch::NoGradGuard g;
    auto alone = lm->forward(ids).logits;
    auto padded = torch::cat({torch::zeros({1, 5}, torch::kLong), ids}, 1);
    auto mask = torch::cat({torch::zeros({1, 5}, torch::kLong), torch::ones({1, 9}, torch::kLong)}, 1);
    ForwardOptions o;
    o.attention_mask = mask;
    auto got = lm->forward(padded, o).logits.narrow(1, 5, 9);
    EXPECT_TRUE(torch::allclose(got, alone, 1e-5, 1e-5));
    EXPECT_FALSE(torch::isnan(lm->forward(padded, o).logits).any().item<bool>());
  }
}

TEST(Decoder, ActivationCheckpointingGivesIdenticalGradients) {
  for (const auto& [arch, tied] : kFamilies) {
    SCOPED_TRACE(arch);
    auto lm = random_model(tiny_config(arch, tied), 5);
    auto gen = qad::testing::seeded_generator(6);
    auto ids = torch::randint(0, 96, {2, 12}, gen);
    auto grads = [&](bool checkpoint) {
      lm->zero_grad();
      ForwardOptions o;
      o.checkpoint_layers = checkpoint;
      o.return_hidden = true;
      auto out = lm->forward(ids, o);
      // Loss touches logits and a hidden state (as CKA-QAD does).
      auto loss = torch::nn::functional::cross_entropy(out.logits.reshape({-1, 96}).narrow(0, 0, 23),
                                                        ids.reshape({-1}).narrow(0, 1, 23)) +
                  out.hidden[0].second.pow(2).mean();
      loss.backward();
      std::vector<torch::Tensor> g;
      for (const auto& p : lm->parameters()) g.push_back(p.grad().clone());
      return g;
    };
    auto plain = grads(false), ckpt = grads(true);
    ASSERT_EQ(plain.size(), ckpt.size());
    for (size_t i = 0; i < plain.size(); ++i) {
      EXPECT_GT(plain[i].abs().sum().item<double>(), 0.0) << "parameter " << i << " got no gradient";
      // The recomputation is the same arithmetic; only the order in which autograd sums the several uses
      // of a layer input may differ, which moves the last bits.
      const double scale = plain[i].abs().max().item<double>();
      EXPECT_LE((plain[i] - ckpt[i]).abs().max().item<double>(), 1e-6 * scale) << "parameter " << i;
    }
    // Frozen embeddings: the layers' parameters still get gradients through the checkpointed layers.
    lm->model->embed_tokens->weight.set_requires_grad(false);
    auto frozen = grads(true);
    EXPECT_GT(lm->model->layer_list[0]->self_attn->q_proj->weight.grad().abs().sum().item<double>(), 0.0);
    lm->model->embed_tokens->weight.set_requires_grad(true);
  }
}

// hidden_rows: the rows come from a pass-through node (model/hidden_rows.h) whose backward adds their gradient
// into the residual stream's. Gradients equal those of gathering the same rows from the full hidden states with
// index_select, with and without activation checkpointing, with the final norm's rows too.
TEST(Decoder, HiddenRowsGiveTheGradientsOfGatheringFromTheFullHiddenStates) {
  for (const auto& [arch, tied] : kFamilies) {
    SCOPED_TRACE(arch);
    auto lm = random_model(tiny_config(arch, tied), 11);
    auto gen = qad::testing::seeded_generator(12);
    auto ids = torch::randint(0, 96, {2, 12}, gen);
    auto rows = std::get<0>(torch::randperm(24, gen, torch::kLong).narrow(0, 0, 7).sort());
    auto weights = torch::randn({7, 32}, gen);
    for (bool checkpoint : {false, true}) {
      SCOPED_TRACE(checkpoint ? "checkpointed" : "plain");
      auto grads = [&](bool tapped) {
        lm->zero_grad();
        ForwardOptions o;
        o.checkpoint_layers = checkpoint;
        o.return_hidden = true;
        if (tapped) o.hidden_rows = rows;
        auto out = lm->forward(ids, o);
        if (tapped) {
          // The rows of every state lie in slices of one buffer, in order, each followed by the scratch rows
          // ForwardOutput names (loss::stack_rows stacks them without a copy; the CKA backward uses the scratch).
          EXPECT_EQ(out.hidden_scratch_rows, 8);
          for (size_t i = 0; i < out.hidden.size(); ++i) {
            const auto& r = out.hidden[i].second;
            const int64_t step = (r.size(0) + out.hidden_scratch_rows) * r.size(1);
            EXPECT_TRUE(r.is_contiguous() && r.is_alias_of(out.hidden[0].second)) << out.hidden[i].first;
            EXPECT_EQ(r.storage_offset(), out.hidden[0].second.storage_offset() + static_cast<int64_t>(i) * step);
          }
        }
        auto loss = torch::nn::functional::cross_entropy(out.logits.reshape({-1, 96}), ids.reshape({-1}));
        for (const auto& [name, h] : out.hidden) {
          auto r = tapped ? h : h.reshape({-1, 32}).index_select(0, rows);
          EXPECT_EQ(r.size(0), 7) << name;
          loss = loss + (r * weights).sum() * 0.01;
        }
        loss.backward();
        std::vector<torch::Tensor> g;
        for (const auto& p : lm->parameters()) g.push_back(p.grad().clone());
        return std::make_pair(loss.item<double>(), g);
      };
      auto [loss_ref, ref] = grads(false);
      const auto before = tap_rows_backward_counts();
      auto [loss_tap, tap] = grads(true);
      const auto after = tap_rows_backward_counts();
      // Every decoder layer's tap found its gradient unshared, plain or checkpointed, and added the rows in
      // place: the path the training step relies on for its speed. (The final norm's gradient may arrive as a
      // view of the lm_head's gradient buffer and be copied; training's CKA layers are the decoder layers.)
      const int64_t taps = lm->config().num_layers + 1;
      EXPECT_GE(after.in_place - before.in_place, lm->config().num_layers);
      EXPECT_EQ(after.in_place - before.in_place + after.copied - before.copied, taps);
      EXPECT_EQ(loss_ref, loss_tap);
      ASSERT_EQ(ref.size(), tap.size());
      for (size_t i = 0; i < ref.size(); ++i) {
        EXPECT_GT(ref[i].abs().sum().item<double>(), 0.0) << "parameter " << i;
        const double scale = ref[i].abs().max().item<double>();
        EXPECT_LE((ref[i] - tap[i]).abs().max().item<double>(), 1e-6 * scale) << "parameter " << i;
      }
    }
  }
}

// hidden_rows_source (rows chosen once the first layer is queued) keeps the same rows as hidden_rows, calls the
// source once, and returns what it chose in ForwardOutput::hidden_rows; an undefined choice keeps every row.
TEST(Decoder, HiddenRowsFromASourceAreTheGivenRows) {
  auto lm = random_model(tiny_config("Qwen3ForCausalLM", false), 13);
  auto gen = qad::testing::seeded_generator(14);
  auto ids = torch::randint(0, 96, {2, 12}, gen);
  auto rows = std::get<0>(torch::randperm(24, gen, torch::kLong).narrow(0, 0, 7).sort());
  torch::NoGradGuard no_grad;
  ForwardOptions given;
  given.return_hidden = true;
  given.hidden_rows = rows;
  auto ref = lm->forward(ids, given);
  EXPECT_TRUE(ref.hidden_rows.equal(rows));
  int calls = 0;
  ForwardOptions lazy;
  lazy.return_hidden = true;
  lazy.hidden_rows_source = [&] {
    ++calls;
    return rows;
  };
  auto out = lm->forward(ids, lazy);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(out.hidden_rows.equal(rows));
  ASSERT_EQ(out.hidden.size(), ref.hidden.size());
  for (size_t i = 0; i < out.hidden.size(); ++i) {
    EXPECT_EQ(out.hidden[i].first, ref.hidden[i].first);
    EXPECT_TRUE(qad::testing::same_bits(out.hidden[i].second, ref.hidden[i].second)) << out.hidden[i].first;
  }
  EXPECT_EQ(out.hidden_scratch_rows, 8);
  // A source that gives no tensor keeps every row: the full states, as without rows.
  ForwardOptions every;
  every.return_hidden = true;
  every.hidden_rows_source = [] { return torch::Tensor(); };
  auto full = lm->forward(ids, every);
  EXPECT_FALSE(full.hidden_rows.defined());
  EXPECT_EQ(full.hidden_scratch_rows, 0);
  ASSERT_EQ(full.hidden.size(), ref.hidden.size());
  EXPECT_EQ(full.hidden[0].second.sizes(), torch::IntArrayRef({2, 12, 32}));
}

TEST(Decoder, SaveLoadRoundTripIsBitwiseShardedOrNot) {
  for (const auto& [arch, tied] : kFamilies) {
    SCOPED_TRACE(arch);
    auto lm = random_model(tiny_config(arch, tied), 7);
    for (uint64_t shard : {uint64_t{0}, uint64_t{20000}}) {
      const auto dir = temp_dir("save");
      lm->save(dir, {.max_shard_bytes = shard});
      EXPECT_EQ(fs::exists(dir / "model.safetensors.index.json"), shard != 0);
      auto ckpt = io::Checkpoint::open(dir);
      EXPECT_EQ(ckpt.find("lm_head.weight") != nullptr, !tied);
      EXPECT_EQ(ckpt.names().size(), lm->hf_tensors().size());
      auto back = CausalLM::load(dir, torch::kCPU, torch::kFloat32);
      auto a = lm->hf_tensors(), b = back->hf_tensors();
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].first, b[i].first);
        EXPECT_TRUE(qad::testing::same_bits(a[i].second, b[i].second)) << a[i].first;
      }
      EXPECT_EQ(back->config().raw, lm->config().raw);
      ::qad::remove_tree(dir);
    }
  }
}

TEST(Decoder, LoadErrorsNameTheTensor) {
  auto lm = random_model(tiny_config("Qwen2ForCausalLM", false), 8);
  const auto dir = temp_dir("bad");
  lm->save(dir, {.max_shard_bytes = 0});
  auto j = json::parse(read_file(dir / "config.json"));
  j["intermediate_size"] = 40;
  write_file_atomic(dir / "config.json", j.dump());
  try {
    CausalLM::load(dir, torch::kCPU, torch::kFloat32);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'model.layers.0.mlp.gate_proj.weight' has shape [48, 32] but config.json "
                                         "implies [40, 32]"),
              std::string::npos)
        << e.what();
  }
  ::qad::remove_tree(dir);
}

TEST(Qwen3Teacher, LoadsTheRealShardedBf16CheckpointAndPredictsText) {
  const auto dir = qad::testing::shared_dir() / "models/qwen3-16m-teacher";
  const auto golden = qad::testing::shared_dir() / "tokenizers/qad8k/golden.jsonl";
  if (!fs::exists(dir / "model.safetensors.index.json") || !fs::exists(golden)) GTEST_SKIP() << dir << " not present";
  auto lm = CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  int64_t n = 0;
  for (const auto& p : lm->parameters()) n += p.numel();
  EXPECT_EQ(n, 15736192);  // README: 12,590,464 non-embedding + 3,145,728 tied embedding
  EXPECT_EQ(lm->linears().size(), 8u * 7u + 1u);
  // Real text from the corpus, tokenized by HF tokenizers (qad8k golden A283): a trained model predicts it
  // far better than chance (ln 8192 = 9.0); the README reports perplexities of 7.5 to 35 on held-out text.
  std::vector<int64_t> ids;
  std::ifstream in(golden);
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line);
    if (j["id"] == "A283") ids = j["ids"].get<std::vector<int64_t>>();
  }
  ASSERT_GE(ids.size(), 257u);
  auto x = torch::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + 257)).unsqueeze(0);
  torch::NoGradGuard g;
  auto logits = lm->forward(x.narrow(1, 0, 256)).logits[0];
  const double nll = torch::nn::functional::cross_entropy(logits, x[0].narrow(0, 1, 256)).item<double>();
  RecordProperty("teacher_nll", std::to_string(nll));
  EXPECT_LT(nll, 4.0);
  EXPECT_GT(nll, 0.5);
}

struct CountingHook : LinearQuantHook {
  int inputs = 0, weights = 0;
  torch::Tensor input(const torch::Tensor& x) override {
    ++inputs;
    return x;
  }
  torch::Tensor weight(const torch::Tensor& w) override {
    ++weights;
    return torch::zeros_like(w);
  }
};

TEST(Decoder, QuantHooksReachEveryLinear) {
  auto lm = random_model(tiny_config("Qwen3ForCausalLM", false), 9);
  auto linears = lm->linears();
  ASSERT_EQ(linears.size(), 2u * 7u + 1u);
  EXPECT_EQ(linears[3]->name(), "model.layers.0.self_attn.o_proj");
  EXPECT_EQ(linears[13]->name(), "model.layers.1.mlp.down_proj");
  EXPECT_EQ(linears.back()->name(), "lm_head");
  auto hook = std::make_shared<CountingHook>();
  for (auto& l : linears) l->quant = hook;
  torch::NoGradGuard g;
  auto logits = lm->forward(torch::zeros({1, 3}, torch::kLong)).logits;
  EXPECT_EQ(hook->inputs, 15);
  EXPECT_EQ(hook->weights, 15);
  EXPECT_EQ(logits.abs().max().item<float>(), 0.0f);  // the zeroed lm_head weight was used
}

TEST(Sampling, TopKAndTopPFilter) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(qad::testing::test_seed());
  // probabilities about 0.6, 0.3, 0.08, 0.02
  auto logits = torch::log(torch::tensor({{0.02f, 0.6f, 0.08f, 0.3f}})).expand({4000, 4}).contiguous();
  GenerateOptions o;
  o.greedy = false;
  o.top_k = 2;
  auto k2 = select_next_tokens(logits, o, gen);
  EXPECT_TRUE(((k2 == 1).logical_or(k2 == 3)).all().item<bool>());
  const double frac1 = (k2 == 1).to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(frac1, 2.0 / 3.0, 0.03);  // renormalised 0.6 / 0.9
  o.top_k = 0;
  o.top_p = 0.5;  // 0.6 alone reaches it
  EXPECT_TRUE((select_next_tokens(logits, o, gen) == 1).all().item<bool>());
  o.top_p = 0.85;  // 0.6 + 0.3
  auto p = select_next_tokens(logits, o, gen);
  EXPECT_TRUE(((p == 1).logical_or(p == 3)).all().item<bool>());
  o.greedy = true;
  EXPECT_TRUE((select_next_tokens(logits, o, gen) == 1).all().item<bool>());
}

}  // namespace
}  // namespace qad::model
