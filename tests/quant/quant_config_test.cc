// apply_nvfp4 / calibrate / quantizer state: which Linears get hooks, what the calibrated amaxes are (checked
// against amaxes recomputed here from the weights and from activations captured with plain forward hooks).
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/test_util.h"
#include "nvfp4/quantize.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "util/config_fields.h"
#include "quant_test_util.h"

namespace qad::testing {
namespace {

using quant::nvfp4_hook;

std::filesystem::path stories() { return shared_dir() / "models/stories260K"; }
std::filesystem::path fixture(const char* n) { return source_dir() / "tests/fixtures/models" / n; }

float amax_of(const torch::Tensor& t) { return t.detach().abs().max().item<float>(); }

TEST(QuantConfig, DefaultsSkipHeadAndNonMultipleOf16) {
  auto lm = model::CausalLM::load(stories(), torch::kCPU, torch::kFloat32);
  auto names = quant::apply_nvfp4(lm, {});
  // 5 layers x (q, k, v, o, gate, up); down_proj has K = 172; lm_head is excluded (and tied).
  EXPECT_EQ(names.size(), 30u);
  for (const auto& n : names) EXPECT_EQ(n.find("down_proj"), std::string::npos) << n;
  auto un = quant::unquantized_modules(lm);
  ASSERT_EQ(un.size(), 6u);
  EXPECT_EQ(un.back(), "lm_head");
  EXPECT_EQ(un.front(), "model.layers.0.mlp.down_proj");
}

TEST(QuantConfig, GlobsOverridesAndFusedGroups) {
  auto lm = model::CausalLM::load(fixture("llama3_rope_gqa_untied"), torch::kCPU, torch::kFloat32);
  quant::QuantConfig c;
  c.exclude.push_back("*.o_proj");
  c.exclude.push_back("model.layers.1.self_attn.k_proj");  // part of a fused group: the whole group stays out
  c.overrides.push_back({"model.layers.2.self_attn.o_proj", true, false});
  c.overrides.push_back({"lm_head", true, {}});
  auto names = quant::apply_nvfp4(lm, c);
  std::set<std::string> s(names.begin(), names.end());
  EXPECT_TRUE(s.count("lm_head"));  // untied here, so an override can quantize it
  EXPECT_FALSE(s.count("model.layers.0.self_attn.o_proj"));
  EXPECT_TRUE(s.count("model.layers.2.self_attn.o_proj"));
  EXPECT_FALSE(s.count("model.layers.1.self_attn.q_proj"));
  EXPECT_FALSE(s.count("model.layers.1.self_attn.v_proj"));
  EXPECT_TRUE(s.count("model.layers.0.self_attn.v_proj"));
  EXPECT_TRUE(s.count("model.layers.1.mlp.gate_proj"));
  for (const auto& l : lm->linears()) {
    if (l->name() == "model.layers.2.self_attn.o_proj") {
      EXPECT_FALSE(nvfp4_hook(l)->quantize_inputs);
    }
  }
  // Re-applying with defaults replaces the previous selection.
  EXPECT_EQ(quant::apply_nvfp4(lm, {}).size(), 3u * 7u);
}

TEST(QuantConfig, FromJson) {
  auto c = quant::quant_config_from_json(nlohmann::json::parse(R"({
    "include": ["model.layers.*"], "exclude": ["*down_proj"], "ste": "clipped", "method": "mse",
    "calib_samples": 64, "quantize_inputs": false, "overrides": [{"pattern": "model.layers.0.*", "quantize": false}]
  })"));
  EXPECT_EQ(c.include, std::vector<std::string>{"model.layers.*"});
  EXPECT_EQ(c.exclude, std::vector<std::string>{"*down_proj"});
  EXPECT_EQ(c.ste, nvfp4::StraightThrough::kClipped);
  EXPECT_EQ(c.method, quant::CalibMethod::kMse);
  EXPECT_EQ(c.calib_samples, 64);
  EXPECT_FALSE(c.quantize_inputs);
  ASSERT_EQ(c.overrides.size(), 1u);
  EXPECT_EQ(*c.overrides[0].quantize, false);
  EXPECT_THROW(quant::quant_config_from_json({{"metod", "max"}}), Error);
  EXPECT_THROW(quant::quant_config_from_json({{"method", "minmax"}}), Error);
  EXPECT_THROW(quant::quant_config_from_json({{"calib_samples", -1}}), Error);
  EXPECT_THROW(quant::quant_config_from_json({{"overrides", {{{"quantize", false}}}}}), Error);  // no pattern
  // The settings list writes what it reads: a round trip keeps every value.
  const auto back = quant::quant_config_from_json(config::to_json(c));
  EXPECT_EQ(config::to_json(back), config::to_json(c));
  EXPECT_EQ(config::to_json(c)["ste"], "clipped");
}

TEST(Calibrate, UncalibratedForwardFailsClearly) {
  auto lm = model::CausalLM::load(stories(), torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(lm, {});
  try {
    lm->forward(torch::tensor({1L, 403L}).unsqueeze(0));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not calibrated"), std::string::npos) << e.what();
  }
}

// Input amaxes equal the max |input| seen by each Linear in a plain (unquantized) forward, taken over real tokens
// only; weight amaxes are the max over the fused group of the weights' amax.
TEST(Calibrate, MaxAmaxesMatchActivationsAndWeights) {
  auto dir = fixture("qwen2_bias_gqa_untied");
  auto ref = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  // Capture inputs with a recording hook that quantizes nothing.
  struct Recorder : model::LinearQuantHook {
    float amax = 0, amax_with_padding = 0;
    torch::Tensor mask;
    torch::Tensor input(const torch::Tensor& x) override {
      auto a = x.abs().amax(-1);
      amax_with_padding = std::max(amax_with_padding, a.max().item<float>());
      if (mask.defined()) a = a * mask.to(a.dtype());
      amax = std::max(amax, a.max().item<float>());
      return x;
    }
    torch::Tensor weight(const torch::Tensor& w) override { return w; }
  };
  std::map<std::string, std::shared_ptr<Recorder>> rec;
  for (auto l : ref->linears()) l->quant = rec[l->name()] = std::make_shared<Recorder>();
  auto source = random_batches(ref->config().vocab_size, 3, 3, 16, 11, /*with_padding=*/true);
  source([&](const torch::Tensor& ids, const torch::Tensor& mask) {
    for (auto& [n, r] : rec) r->mask = mask;
    model::ForwardOptions o;
    o.attention_mask = mask;
    ref->forward(ids, o);
  });

  auto lm = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(lm, {});
  quant::calibrate(lm, source, {});
  std::map<std::string, float> group_in, group_w;
  for (const auto& l : lm->linears()) {
    if (!nvfp4_hook(l)) continue;
    auto g = quant::fused_group(l->name());
    if (g.empty()) g = l->name();
    group_in[g] = std::max(group_in[g], rec.at(l->name())->amax);
    group_w[g] = std::max(group_w[g], amax_of(l->weight));
  }
  int checked = 0;
  for (const auto& l : lm->linears()) {
    auto* h = nvfp4_hook(l);
    if (!h) continue;
    auto g = quant::fused_group(l->name());
    if (g.empty()) g = l->name();
    EXPECT_EQ(h->input_amax.item<float>(), group_in.at(g)) << l->name();
    EXPECT_EQ(h->weight_amax.item<float>(), group_w.at(g)) << l->name();
    ++checked;
  }
  EXPECT_EQ(checked, 14);
  // Padding matters here: counting the padded rows would raise some amax.
  bool any_larger = false;
  for (const auto& [n, r] : rec) any_larger |= r->amax_with_padding > r->amax;
  EXPECT_TRUE(any_larger) << "the padded rows should have raised some amax";
}

TEST(Calibrate, CalibSamplesLimitsRows) {
  auto dir = fixture("llama3_rope_gqa_untied");
  quant::QuantConfig c;
  c.calib_samples = 2;
  auto a = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(a, c);
  quant::calibrate(a, random_batches(256, 5, 3, 16, 3), c);  // only the first 2 rows of batch 0 count
  auto b = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(b, c);
  quant::calibrate(b, [](const quant::BatchSink& sink) {
    random_batches(256, 1, 3, 16, 3)([&](const torch::Tensor& ids, const torch::Tensor&) {
      sink(ids.narrow(0, 0, 2), {});
    });
  }, c);
  auto sa = quant::quantizer_state(a), sb = quant::quantizer_state(b);
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(same_bits(sa[i].second, sb[i].second)) << sa[i].first;
}

// MSE calibration: the chosen weight amax never has a larger squared error than max calibration's, and differs
// from it somewhere on a real model.
TEST(Calibrate, MseNoWorseThanMaxOnWeights) {
  auto dir = stories();
  quant::QuantConfig mse;
  mse.method = quant::CalibMethod::kMse;
  auto a = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(a, {});
  quant::calibrate(a, document_batches(stories_generations(), 32), {});
  auto b = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(b, mse);
  quant::calibrate(b, document_batches(stories_generations(), 32), mse);
  auto la = a->linears(), lb = b->linears();
  int differ = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    if (!nvfp4_hook(la[i])) continue;
    differ += nvfp4_hook(la[i])->weight_amax.item<float>() != nvfp4_hook(lb[i])->weight_amax.item<float>();
    EXPECT_TRUE(same_bits(nvfp4_hook(la[i])->input_amax, nvfp4_hook(lb[i])->input_amax)) << "inputs stay max";
  }
  EXPECT_GT(differ, 0);
  std::map<std::string, std::pair<double, double>> group_err;
  for (size_t i = 0; i < la.size(); ++i) {
    if (!nvfp4_hook(la[i])) continue;
    auto g = quant::fused_group(la[i]->name());
    auto w = la[i]->weight.detach();
    auto& e = group_err[g.empty() ? la[i]->name() : g];
    e.first += (nvfp4::fake_quantize(w, nvfp4_hook(la[i])->weight_amax) - w).pow(2).sum().item<double>();
    e.second += (nvfp4::fake_quantize(w, nvfp4_hook(lb[i])->weight_amax) - w).pow(2).sum().item<double>();
  }
  for (const auto& [g, e] : group_err) EXPECT_LE(e.second, e.first) << g;
}

TEST(QuantizerState, RoundTripRestoresIdenticalLogits) {
  auto dir = fixture("qwen3_qknorm_headdim_tied");
  auto lm = quantized_fixture(dir);
  auto state = quant::quantizer_state(lm);
  EXPECT_EQ(state.size(), 2u * 3u * 7u);
  auto ids = torch::randint(256, {2, 12}, seeded_generator(5), torch::kLong);
  auto want = lm->forward(ids).logits;

  auto fresh = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::load_quantizer_state(fresh, state, {});
  EXPECT_TRUE(same_bits(fresh->forward(ids).logits, want));
  auto plain = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  EXPECT_FALSE(same_bits(plain->forward(ids).logits, want)) << "quantization must change the logits";

  auto bad = state;
  bad.emplace_back("model.layers.9.mlp.up_proj.weight_quantizer._amax", torch::tensor(1.0f));
  EXPECT_THROW(quant::load_quantizer_state(fresh, bad, {}), Error);
  bad = state;
  bad[0].second = torch::tensor(std::numeric_limits<float>::quiet_NaN());
  EXPECT_THROW(quant::load_quantizer_state(fresh, bad, {}), Error);
}

// The hook is deterministic (activation checkpointing re-runs it) and its identity STE passes gradients.
TEST(Hook, DeterministicWithStraightThroughGradient) {
  auto lm = quantized_fixture(fixture("llama3_rope_gqa_untied"));
  auto ids = torch::randint(256, {2, 10}, seeded_generator(9), torch::kLong);
  auto a = lm->forward(ids).logits, b = lm->forward(ids).logits;
  EXPECT_TRUE(same_bits(a, b));
  model::ForwardOptions o;
  o.checkpoint_layers = true;
  auto c = lm->forward(ids, o).logits;
  EXPECT_TRUE(same_bits(a, c));
  c.sum().backward();
  auto g = lm->linears()[0]->weight.grad();
  ASSERT_TRUE(g.defined());
  EXPECT_GT(g.abs().sum().item<float>(), 0.0f);
}

TEST(AmaxForScale, ReproducesEveryDivisionResult) {
  auto gen = seeded_generator(21);
  auto a = torch::rand({20000}, gen) * 100.0;
  auto e = torch::randint(-30, 30, {20000}, gen, torch::kFloat);
  a = (a * torch::pow(2.0, e)).to(torch::kFloat32);
  auto acc = a.accessor<float, 1>();
  for (int64_t i = 0; i < a.size(0); ++i) {
    const float s = acc[i] / 2688.0f;
    ASSERT_EQ(quant::amax_for_scale(s, "t") / 2688.0f, s) << acc[i];
  }
  EXPECT_THROW(quant::amax_for_scale(-1.0f, "t"), Error);
}

}  // namespace
}  // namespace qad::testing
