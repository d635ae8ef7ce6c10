// The FP8 KV cache (docs/quant.md, "FP8 KV cache"): the fake quantization against an element-by-element emulation
// with the host E4M3 codec (nvfp4/e4m3.h, itself checked against CUDA's cuda_fp8.h), attention with FP8 keys and
// values against a reference attention written here (plain, fused q/k-norm + RoPE and SDPA paths), cached
// decoding and continuous batching against full recomputation, where calibration measures (after q/k-norm and
// RoPE, padding excluded), the quantizer state a resumed run restores, export -> import -> export, and the errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "io/safetensors.h"
#include "io/safetensors_torch.h"
#include "io/safetensors_writer.h"
#include "model/generate_test_util.h"
#include "model/kv_cache.h"
#include "nvfp4/e4m3.h"
#include "nvfp4/fp8.h"
#include "quant/kv_quant.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "util/atomic_file.h"
#include "util/config_fields.h"
#include "util/remove_tree.h"
#include "util/torch_compat.h"
#include "kv_fp8_test_util.h"
#include "quant_test_util.h"

namespace qad::testing {
namespace {
namespace fs = std::filesystem;

fs::path scratch(const std::string& name) { return scratch_dir("qad_kvfp8", name); }

TEST(Fp8FakeQuant, E4M3RoundEqualsTheHostCodec) {
  auto x = probe_values();
  auto got = nvfp4::e4m3_round(x);
  auto want = reference_fp8(x, 1.0f);
  EXPECT_TRUE(same_bits(got, want));
  // Saturation, ties to even, subnormals and signs, spelled out.
  auto t = nvfp4::e4m3_round(torch::tensor({500.0f, -1e9f, INFINITY, 1.0625f, 1.1875f, 0.0029296875f, -0.0f}));
  auto expect = torch::tensor({448.0f, -448.0f, 448.0f, 1.0f, 1.25f, 0.00390625f, -0.0f});
  EXPECT_TRUE(same_bits(t, expect));
  EXPECT_TRUE(std::isnan(nvfp4::e4m3_round(torch::tensor({NAN})).item<float>()));
}

TEST(Fp8FakeQuant, EqualsTheElementwiseEmulationInEveryDtype) {
  auto x = probe_values();
  for (float scale : {1.0f, 0.25f, 0.0123f, 3.7f}) {
    for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      SCOPED_TRACE(fmt::format("scale {} dtype {}", scale, c10::toString(dtype)));
      auto xd = (x * scale).to(dtype);
      auto got = nvfp4::fp8_fake_quantize(xd, scalar_tensor(scale));
      auto want = reference_fp8(xd, scale);
      EXPECT_EQ(got.scalar_type(), dtype);
      EXPECT_TRUE(same_bits(got, want));
      // The test can fail: most values move, and the largest saturate at 448 * scale.
      auto finite = torch::isfinite(xd);
      EXPECT_GT((got != xd).logical_and(finite).sum().item<int64_t>(), x.numel() / 4);
      EXPECT_EQ(got.to(torch::kFloat32).abs().masked_select(finite).max().item<float>(),
                torch::tensor(448.0f * scale).to(dtype).to(torch::kFloat32).item<float>());
    }
  }
}

TEST(Fp8FakeQuant, StraightThroughGradient) {
  auto gen = seeded_generator(42);
  auto x = (torch::randn({256}, gen) * 10).requires_grad_(true);
  const auto scale = scalar_tensor(0.01f);  // |x| / scale up to ~3000: many elements saturate at 448
  auto g = torch::randn({256}, gen);
  auto y = nvfp4::fp8_fake_quantize_ste(x, scale);
  EXPECT_TRUE(same_bits(y.detach(), reference_fp8(x, 0.01f)));
  (y * g).sum().backward();
  EXPECT_TRUE(same_bits(x.grad(), g)) << "identity STE";
  x.mutable_grad() = torch::Tensor();
  auto yc = nvfp4::fp8_fake_quantize_ste(x, scale, nvfp4::StraightThrough::kClipped);
  (yc * g).sum().backward();
  auto inside = (x.detach() / 0.01f).abs() <= 448.0f;
  EXPECT_TRUE(same_bits(x.grad(), g * inside.to(torch::kFloat32))) << "clipped STE";
  const int64_t saturated = inside.logical_not().sum().item<int64_t>();
  EXPECT_GT(saturated, 10);
  EXPECT_LT(saturated, 250);
}

// ---- attention ---------------------------------------------------------------------------------------------------

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

struct Rope {
  torch::Tensor cos, sin;  // [B, T, D]
};

Rope rope_for(const model::ModelConfig& c, int64_t b, int64_t t) {
  auto pos = torch::arange(t, torch::kFloat32);
  auto freqs = pos.unsqueeze(-1) * model::rope_inv_freq(c);
  auto angles = torch::cat({freqs, freqs}, -1).unsqueeze(0).expand({b, t, c.head_dim});
  return {angles.cos(), angles.sin()};
}

// The attention of one layer written out: projections, q/k-norm, RoPE, keys and values replaced by `kv(k, v)`
// (quantized or not), per-head causal softmax attention with GQA by index, o_proj. x: [B, T, hidden], FP32.
torch::Tensor reference_attention(model::AttentionImpl& a, const model::ModelConfig& c, const torch::Tensor& x,
                                  const Rope& r, const std::function<torch::Tensor(const torch::Tensor&, bool)>& kv,
                                  bool quantize_before_rope = false) {
  const int64_t b = x.size(0), t = x.size(1), hq = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim;
  auto lin = [&](model::Linear& l) { return torch::linear(x, l->weight, l->bias); };
  auto q = lin(a.q_proj).view({b, t, hq, d});
  auto k = lin(a.k_proj).view({b, t, hkv, d});
  auto v = lin(a.v_proj).view({b, t, hkv, d}).transpose(1, 2);
  if (a.q_norm) {
    q = a.q_norm(q);
    k = a.k_norm(k);
  }
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  if (quantize_before_rope) k = kv(k, true);
  auto rot = [&](const torch::Tensor& y) { return y * r.cos.unsqueeze(1) + rotate_half(y) * r.sin.unsqueeze(1); };
  q = rot(q);
  k = rot(k);
  if (!quantize_before_rope) k = kv(k, true);
  v = kv(v, false);
  auto out = torch::empty({b, hq, t, d});
  const auto causal = torch::ones({t, t}, torch::kBool).tril();
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / (hq / hkv);  // the kv head this query head reads
      auto s = torch::matmul(q[bi][h], k[bi][g].transpose(0, 1)) / std::sqrt(static_cast<double>(d));
      s = s.masked_fill(causal.logical_not(), -INFINITY);
      out[bi][h] = torch::matmul(torch::softmax(s, -1), v[bi][g]);
    }
  }
  return torch::linear(out.transpose(1, 2).reshape({b, t, hq * d}), a.o_proj->weight, a.o_proj->bias);
}

TEST(Fp8KvAttention, EqualsAReferenceAttentionOverQuantizedKeysAndValues) {
  for (const char* arch : {"Qwen3ForCausalLM", "LlamaForCausalLM"}) {  // with and without q/k-norm; both GQA 4/2
    SCOPED_TRACE(arch);
    auto lm = model::tiny_model(arch, false, 43);
    const auto& c = lm->config();
    auto& attn = *lm->model->layer_list[0]->self_attn;
    auto gen = seeded_generator(44);
    const int64_t b = 2, t = 9;
    auto x = torch::randn({b, t, c.hidden_size}, gen);
    const auto r = rope_for(c, b, t);
    torch::NoGradGuard ng;

    // Scales from the unquantized keys / values, a third below their amax: the top elements saturate.
    torch::Tensor k_seen, v_seen;
    (void)reference_attention(attn, c, x, r, [&](const torch::Tensor& y, bool is_k) {
      (is_k ? k_seen : v_seen) = y;
      return y;
    });
    const float ks = k_seen.abs().max().item<float>() / 448.0f * 0.7f;
    const float vs = v_seen.abs().max().item<float>() / 448.0f * 0.7f;
    auto quantize = [&](const torch::Tensor& y, bool is_k) { return reference_fp8(y, is_k ? ks : vs); };
    auto want = reference_attention(attn, c, x, r, quantize);
    auto plain = reference_attention(attn, c, x, r, [](const torch::Tensor& y, bool) { return y; });
    auto before_rope = reference_attention(attn, c, x, r, quantize, /*quantize_before_rope=*/true);

    auto hook = std::make_shared<quant::Fp8KvQuant>("model.layers.0.self_attn");
    hook->k_scale = scalar_tensor(ks);
    hook->v_scale = scalar_tensor(vs);
    attn.kv_quant = hook;
    std::vector<std::pair<std::string, model::AttentionContext>> paths;
    model::AttentionContext ctx;
    ctx.cos = r.cos;
    ctx.sin = r.sin;
    ctx.backend = model::AttentionBackend::kMath;
    paths.emplace_back("math", ctx);
    ctx.fused = model::FusedKernels::kAlways;  // the fused q/k-norm + RoPE kernel (its CPU reference loop)
    paths.emplace_back("fused rope", ctx);
    if (compat::kHasSdpa) {
      ctx.fused = model::FusedKernels::kOff;
      ctx.backend = model::AttentionBackend::kSdpa;
      paths.emplace_back("sdpa", ctx);
    }
    for (const auto& [name, p] : paths) {
      SCOPED_TRACE(name);
      auto got = attn.forward(x, p);
      EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-5)) << (got - want).abs().max().item<float>();
      // The test can fail: unquantized keys/values, or keys quantized before RoPE, are far off.
      EXPECT_GT((got - plain).abs().max().item<float>(), 1e-3);
      EXPECT_GT((got - before_rope).abs().max().item<float>(), 1e-3);
    }
  }
}

TEST(Fp8KvGeneration, CachedDecodingEqualsFullRecomputation) {
  for (const char* arch : {"Qwen3ForCausalLM", "LlamaForCausalLM"}) {
    SCOPED_TRACE(arch);
    auto lm = kv_only_model(arch, 45);
    auto plain = model::tiny_model(arch, false, 45);
    auto ids = torch::randint(0, 96, {2, 24}, seeded_generator(46));
    torch::NoGradGuard g;
    auto full = lm->forward(ids).logits;
    EXPECT_GT((full - plain->forward(ids).logits).abs().max().item<float>(), 1e-3) << "the KV cache is not quantized";
    model::KVCache cache(lm->config(), 2, 24, torch::kCPU, torch::kFloat32);
    model::ForwardOptions o;
    o.cache = &cache;
    std::vector<torch::Tensor> parts = {lm->forward(ids.narrow(1, 0, 10), o).logits,
                                        lm->forward(ids.narrow(1, 10, 4), o).logits};
    for (int64_t t = 14; t < 24; ++t) parts.push_back(lm->forward(ids.narrow(1, t, 1), o).logits);
    auto stepped = torch::cat(parts, 1);
    // As close as the unquantized model's steps are to its full forward (float32 sums in another order), far
    // below what the FP8 KV cache changes (> 1e-3 above).
    model::KVCache plain_cache(lm->config(), 2, 24, torch::kCPU, torch::kFloat32);
    o.cache = &plain_cache;
    std::vector<torch::Tensor> plain_parts = {plain->forward(ids.narrow(1, 0, 10), o).logits,
                                              plain->forward(ids.narrow(1, 10, 4), o).logits};
    for (int64_t t = 14; t < 24; ++t) plain_parts.push_back(plain->forward(ids.narrow(1, t, 1), o).logits);
    const float noise = (torch::cat(plain_parts, 1) - plain->forward(ids).logits).abs().max().item<float>();
    const float diff = (stepped - full).abs().max().item<float>();
    RecordProperty(std::string("plain_noise_") + arch, std::to_string(noise));
    EXPECT_LE(diff, std::max(4.0f * noise, 1e-5f)) << "cached " << diff << " vs unquantized noise " << noise;
    // The cache holds the quantized values: each is a point of the E4M3 grid scaled by the layer's scale.
    const auto hooks = quant::kv_hooks(lm);
    for (size_t l = 0; l < hooks.size(); ++l) {
      for (auto [cached, scale] : {std::pair{cache.k[l], hooks[l]->k_scale}, std::pair{cache.v[l], hooks[l]->v_scale}}) {
        auto c = cached.narrow(2, 0, 24);
        EXPECT_TRUE(same_bits(reference_fp8(c, scale.item<float>()), c)) << "layer " << l;
      }
    }
  }
}

TEST(Fp8KvGeneration, ContinuousBatchingEqualsOnePromptAtATimeWithoutCache) {
  for (const char* arch : {"Qwen3ForCausalLM", "LlamaForCausalLM"}) {
    SCOPED_TRACE(arch);
    auto lm = kv_only_model(arch, 47);
    auto requests = model::random_requests(6, 48);
    model::BatchedGenerateOptions o;
    o.max_new_tokens = 12;
    std::vector<model::GenerationOutput> want;
    for (const auto& r : requests) want.push_back(model::reference_generate(lm, r, o));
    for (int64_t slots : {2, 6}) {
      o.max_slots = slots;
      model::expect_equal_outputs(model::generate_batched(lm, requests, o), want, fmt::format("slots {}", slots));
    }
  }
}

// ---- calibration -------------------------------------------------------------------------------------------------

TEST(Fp8KvCalibration, MeasuresKeysAfterQkNormAndRopeAndValuesAfterVProj) {
  for (const char* arch : {"Qwen3ForCausalLM", "LlamaForCausalLM"}) {
    SCOPED_TRACE(arch);
    auto lm = model::tiny_model(arch, false, 49);
    const auto& c = lm->config();
    const int64_t b = 2, t = 20;
    auto ids = torch::randint(0, 96, {b, t}, seeded_generator(50));
    quant::QuantConfig cfg;
    cfg.kv_cache = quant::KvCacheQuant::kFp8;
    quant::apply_nvfp4(lm, cfg);
    quant::calibrate(lm, [&](const quant::BatchSink& sink) { sink(ids, {}); }, cfg);

    // Layer 0 by hand: during calibration nothing is quantized, so its input is the normed embedding.
    torch::NoGradGuard ng;
    auto& layer = *lm->model->layer_list[0];
    auto& a = *layer.self_attn;
    auto normed = layer.input_layernorm(torch::embedding(lm->model->embed_tokens->weight, ids));
    auto k = torch::linear(normed, a.k_proj->weight, a.k_proj->bias).view({b, t, c.num_kv_heads, c.head_dim});
    auto v = torch::linear(normed, a.v_proj->weight, a.v_proj->bias);
    if (a.k_norm) k = a.k_norm(k);
    k = k.transpose(1, 2);
    const auto r = rope_for(c, b, t);
    auto k_rope = k * r.cos.unsqueeze(1) + rotate_half(k) * r.sin.unsqueeze(1);
    const float pre = k.abs().max().item<float>(), post = k_rope.abs().max().item<float>();
    ASSERT_GT(std::fabs(pre - post), 1e-3f * post) << "the case must tell pre- from post-RoPE keys apart";

    const auto* h = quant::kv_hooks(lm)[0];
    ASSERT_NE(h, nullptr);
    EXPECT_NEAR(h->k_scale.item<float>(), post / 448.0f, 1e-5f * post / 448.0f);
    EXPECT_GT(std::fabs(h->k_scale.item<float>() - pre / 448.0f), 1e-4f * post / 448.0f);
    const float v_amax = v.abs().max().item<float>();
    EXPECT_NEAR(h->v_scale.item<float>(), v_amax / 448.0f, 1e-5f * v_amax / 448.0f);
    // k_scale is amax / 448 in float32, bit for bit.
    EXPECT_EQ(h->k_scale.item<float>(), h->k_amax.item<float>() / 448.0f);
    for (const auto* x : quant::kv_hooks(lm)) {
      ASSERT_NE(x, nullptr);
      EXPECT_GT(x->k_scale.item<float>(), 0.0f);
      EXPECT_GT(x->v_scale.item<float>(), 0.0f);
    }
  }
}

TEST(Fp8KvCalibration, PaddingDoesNotCount) {
  // Left padding with a token whose layer-0 value vector has one large component (its embedding is the first row
  // of v_proj's weight, undoing the norm's weight): counted, it would set layer 0's v_scale.
  auto make = [] {
    auto lm = model::tiny_model("LlamaForCausalLM", false, 51);
    torch::NoGradGuard ng;
    auto& layer = *lm->model->layer_list[0];
    lm->model->embed_tokens->weight[95].copy_(layer.self_attn->v_proj->weight[0] / layer.input_layernorm->weight);
    quant::QuantConfig cfg;
    cfg.kv_cache = quant::KvCacheQuant::kFp8;
    quant::apply_nvfp4(lm, cfg);
    return lm;
  };
  quant::QuantConfig cfg;
  cfg.kv_cache = quant::KvCacheQuant::kFp8;
  auto ids = torch::randint(0, 90, {2, 16}, seeded_generator(52));
  auto padded = torch::cat({torch::full({2, 5}, 95, torch::kLong), ids}, 1);
  auto mask = torch::cat({torch::zeros({2, 5}, torch::kLong), torch::ones({2, 16}, torch::kLong)}, 1);
  auto plain = make(), masked = make(), counted = make();
  quant::calibrate(plain, [&](const quant::BatchSink& sink) { sink(ids, {}); }, cfg);
  quant::calibrate(masked, [&](const quant::BatchSink& sink) { sink(padded, mask); }, cfg);
  quant::calibrate(counted, [&](const quant::BatchSink& sink) { sink(padded, {}); }, cfg);
  const auto a = quant::kv_hooks(plain), p = quant::kv_hooks(masked);
  for (size_t l = 0; l < a.size(); ++l) {
    for (auto [x, y] : {std::pair{a[l]->k_scale, p[l]->k_scale}, std::pair{a[l]->v_scale, p[l]->v_scale}}) {
      EXPECT_NEAR(y.item<float>(), x.item<float>(), 1e-5f * x.item<float>()) << "layer " << l;
    }
  }
  // The control: the same rows without the mask move layer 0's v_scale.
  EXPECT_GT(quant::kv_hooks(counted)[0]->v_scale.item<float>(), 1.2f * a[0]->v_scale.item<float>());
}

// ---- quantizer state (training checkpoints, resume) ---------------------------------------------------------------

TEST(Fp8KvState, ResumeRestoresTheScalesExactly) {
  const auto dir = quant_model_dirs()[3];  // Qwen3 with q/k-norm
  quant::QuantConfig cfg;
  cfg.kv_cache = quant::KvCacheQuant::kFp8;
  auto lm = quantized_fixture(dir, torch::kFloat32, cfg);
  auto state = quant::quantizer_state(lm);
  int kv = 0;
  for (const auto& [n, t] : state) {
    if (!n.ends_with("_scale")) continue;
    ++kv;
    EXPECT_TRUE(n.ends_with(".self_attn.k_proj.k_scale") || n.ends_with(".self_attn.v_proj.v_scale")) << n;
    EXPECT_EQ(t.scalar_type(), torch::kFloat32);
    EXPECT_EQ(t.dim(), 0);
  }
  EXPECT_EQ(kv, 2 * lm->config().num_layers);
  // As a checkpoint stores it (quantizer.safetensors) and a resumed run loads it: hooks installed uncalibrated by
  // apply_nvfp4, then the state.
  auto file = scratch("state") / "quantizer.safetensors";
  fs::create_directories(file.parent_path());
  io::write_tensors(file, state);
  auto resumed = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(resumed, cfg);
  quant::load_quantizer_state(resumed, io::read_tensors(file), cfg);
  const auto a = quant::kv_hooks(lm), b = quant::kv_hooks(resumed);
  for (size_t l = 0; l < a.size(); ++l) {
    EXPECT_TRUE(same_bits(a[l]->k_scale, b[l]->k_scale)) << l;
    EXPECT_TRUE(same_bits(a[l]->v_scale, b[l]->v_scale)) << l;
  }
  auto ids = torch::randint(lm->config().vocab_size, {2, 13}, seeded_generator(53), torch::kLong);
  torch::NoGradGuard ng;
  EXPECT_TRUE(same_bits(resumed->forward(ids).logits, lm->forward(ids).logits));
  // A state without KV scales (kv_cache none) leaves the KV cache unquantized, whatever apply_nvfp4 installed.
  std::vector<std::pair<std::string, torch::Tensor>> linear_only;
  for (const auto& e : state) {
    if (!e.first.ends_with("_scale")) linear_only.push_back(e);
  }
  quant::load_quantizer_state(resumed, linear_only, cfg);
  EXPECT_FALSE(quant::has_fp8_kv_cache(resumed));
  ::qad::remove_tree(file.parent_path());
}

TEST(Fp8KvState, BadStatesAreRefused) {
  const auto dir = quant_model_dirs()[0];
  quant::QuantConfig cfg;
  cfg.kv_cache = quant::KvCacheQuant::kFp8;
  auto lm = quantized_fixture(dir, torch::kFloat32, cfg);
  auto state = quant::quantizer_state(lm);
  auto without = [&](const std::string& name) {
    std::vector<std::pair<std::string, torch::Tensor>> s;
    for (const auto& e : state) {
      if (e.first != name) s.push_back(e);
    }
    return s;
  };
  expect_error_containing([&] { quant::load_quantizer_state(lm, without("model.layers.1.self_attn.v_proj.v_scale"), cfg); },
                          {"model.layers.1.self_attn.v_proj.v_scale", "every attention layer"});
  auto bad = state;
  bad.emplace_back("model.layers.9.self_attn.k_proj.k_scale", scalar_tensor(1.0f));
  expect_error_containing([&] { quant::load_quantizer_state(lm, bad, cfg); },
                          {"model.layers.9.self_attn", "names no attention layer"});
  bad = without("model.layers.0.self_attn.k_proj.k_scale");
  bad.emplace_back("model.layers.0.self_attn.k_proj.k_scale", scalar_tensor(0.0f));
  expect_error_containing([&] { quant::load_quantizer_state(lm, bad, cfg); },
                          {"model.layers.0.self_attn.k_proj.k_scale", "> 0"});
}

// ---- configuration -----------------------------------------------------------------------------------------------

TEST(Fp8KvConfig, KeyAndRecipe) {
  EXPECT_EQ(quant::quant_config_from_json(nullptr).kv_cache, quant::KvCacheQuant::kNone);
  EXPECT_EQ(quant::quant_config_from_json({{"kv_cache", "fp8"}}).kv_cache, quant::KvCacheQuant::kFp8);
  EXPECT_EQ(config::to_json(quant::QuantConfig{})["kv_cache"], "none");
  expect_error_containing([] { quant::quant_config_from_json({{"kv_cache", "fp16"}}); },
                          {"quant.kv_cache", "none, fp8"});
  // The shipped recipe: ModelOpt's nvfp4_default-kv_fp8 (max calibration, W4A4, FP8 KV), as quant.options.
  const auto text = read_file(source_dir() / "recipes/nvfp4_kv_fp8.yaml");
  EXPECT_NE(text.find("kv_cache: fp8"), std::string::npos);
  EXPECT_NE(text.find("options:"), std::string::npos);
  EXPECT_NE(text.find("method: max"), std::string::npos);
}

TEST(Fp8KvCalibration, AllZeroValuesAreAnError) {
  auto lm = model::tiny_model("LlamaForCausalLM", false, 54);
  {
    torch::NoGradGuard ng;
    lm->model->layer_list[1]->self_attn->v_proj->weight.zero_();
  }
  quant::QuantConfig cfg;
  cfg.kv_cache = quant::KvCacheQuant::kFp8;
  quant::apply_nvfp4(lm, cfg);
  expect_error_containing([&] { quant::calibrate(lm, random_batches(96, 1, 2, 8, 55), cfg); },
                          {"values of model.layers.1.self_attn are all 0"});
}

// ---- export / import -----------------------------------------------------------------------------------------------

TEST(Fp8KvExport, ExportImportExportIsByteIdenticalAndComputesTheSame) {
  for (auto [index, dtype] : {std::pair{3, torch::kFloat32}, {5, torch::kFloat32}, {0, torch::kBFloat16}}) {
    const auto dir = quant_model_dirs()[static_cast<size_t>(index)];
    SCOPED_TRACE(dir.filename().string() + " " + c10::toString(dtype));
    quant::QuantConfig cfg;
    cfg.kv_cache = quant::KvCacheQuant::kFp8;
    auto lm = quantized_fixture(dir, dtype, cfg);
    auto without_kv = quantized_fixture(dir, dtype);
    auto ids = torch::randint(lm->config().vocab_size, {2, 17}, seeded_generator(56), torch::kLong);
    auto mask = torch::ones({2, 17}, torch::kLong);
    mask[1].narrow(0, 0, 4).fill_(0);
    model::ForwardOptions o;
    o.attention_mask = mask;
    torch::NoGradGuard ng;
    auto want = lm->forward(ids, o).logits;
    EXPECT_FALSE(same_bits(want, without_kv->forward(ids, o).logits)) << "FP8 KV must change the logits";

    auto out = scratch("export_" + dir.filename().string());
    EXPECT_EQ(quant::export_nvfp4(lm, out, dir), quant::NvFp4Format::kW4A4);
    ASSERT_TRUE(quant::is_nvfp4_checkpoint(out));
    EXPECT_EQ(read_json(out / "hf_quant_config.json")["quantization"]["kv_cache_quant_algo"], "FP8");
    const nlohmann::json scheme = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
    EXPECT_EQ(read_json(out / "config.json")["quantization_config"]["kv_cache_scheme"], scheme);
    auto back = quant::load_nvfp4(out, torch::kCPU, dtype);
    ASSERT_TRUE(quant::has_fp8_kv_cache(back));
    const auto a = quant::kv_hooks(lm), b = quant::kv_hooks(back);
    for (size_t l = 0; l < a.size(); ++l) {
      EXPECT_TRUE(same_bits(a[l]->k_scale, b[l]->k_scale)) << l;
      EXPECT_TRUE(same_bits(a[l]->v_scale, b[l]->v_scale)) << l;
    }
    EXPECT_TRUE(same_bits(back->forward(ids, o).logits, want));

    auto again = scratch("again_" + dir.filename().string());
    quant::export_nvfp4(back, again, dir);
    for (const auto* f : {"model.safetensors", "config.json", "hf_quant_config.json"}) {
      EXPECT_EQ(read_file(out / f), read_file(again / f)) << f;
    }
    ::qad::remove_tree(out);
    ::qad::remove_tree(again);
  }
}

TEST(Fp8KvExport, WithoutKvTheExportIsUnchanged) {
  // kv_cache none: no k_scale / v_scale tensors and the null fields of before.
  const auto dir = quant_model_dirs()[3];
  auto lm = quantized_fixture(dir);
  EXPECT_FALSE(quant::has_fp8_kv_cache(lm));
  auto out = scratch("nokv");
  quant::export_nvfp4(lm, out, dir);
  for (const auto& n : io::Checkpoint::open(out).names()) {
    EXPECT_FALSE(n.ends_with("k_scale") || n.ends_with("v_scale")) << n;
  }
  EXPECT_TRUE(read_json(out / "hf_quant_config.json")["quantization"]["kv_cache_quant_algo"].is_null());
  EXPECT_TRUE(read_json(out / "config.json")["quantization_config"]["kv_cache_scheme"].is_null());
  EXPECT_FALSE(quant::has_fp8_kv_cache(quant::load_nvfp4(out, torch::kCPU, torch::kFloat32)));
  ::qad::remove_tree(out);
}

// The bad-import cases edit a good FP8 KV export.
class Fp8KvBadImport : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = quant_model_dirs()[0];
    good_ = scratch("good");
    quant::QuantConfig cfg;
    cfg.kv_cache = quant::KvCacheQuant::kFp8;
    quant::export_nvfp4(quantized_fixture(src_, torch::kFloat32, cfg), good_, src_);
  }
  void TearDown() override {
    ::qad::remove_tree(good_);
    for (const auto& d : made_) ::qad::remove_tree(d);
  }

  // A copy of the good export with its tensors edited (nullptr: unchanged).
  fs::path edited(const std::string& name, const std::function<void(io::NamedTensors&)>& edit) {
    auto dir = scratch(name);
    made_.push_back(dir);
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(good_)) fs::copy_file(e.path(), dir / e.path().filename());
    if (edit) {
      auto t = io::read_tensors(good_);
      // read_tensors gives FP8 block scales as bytes: keep their safetensors dtype by writing raw refs.
      edit(t);
      auto ckpt = io::Checkpoint::open(good_);
      std::vector<torch::Tensor> keep;
      std::vector<io::TensorRef> refs;
      for (const auto& [n, x] : t) {
        auto c = x.contiguous();
        keep.push_back(c);
        const auto* e = ckpt.find(n);
        const auto dt = e != nullptr ? e->info->dtype : io::from_scalar_type(c.scalar_type());
        refs.push_back({n, dt, std::vector<int64_t>(c.sizes().begin(), c.sizes().end()),
                        std::span<const std::byte>(static_cast<const std::byte*>(c.data_ptr()), c.nbytes())});
      }
      fs::remove(dir / "model.safetensors");
      io::write_safetensors(dir / "model.safetensors", refs);
    }
    return dir;
  }

  fs::path src_, good_;
  std::vector<fs::path> made_;
};

void erase(io::NamedTensors& t, const std::string& name) {
  std::erase_if(t, [&](const auto& e) { return e.first == name; });
}

TEST_F(Fp8KvBadImport, MissingScaleNamesTheFileAndTensor) {
  const std::string n = "model.layers.1.self_attn.v_proj.v_scale";
  auto dir = edited("missing", [&](io::NamedTensors& t) { erase(t, n); });
  EXPECT_TRUE(quant::is_nvfp4_checkpoint(dir));
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); },
                          {dir.string(), n, "missing", "hf_quant_config.json", "kv_cache_quant_algo FP8"});
}

TEST_F(Fp8KvBadImport, ZeroOrNonScalarScale) {
  const std::string n = "model.layers.0.self_attn.k_proj.k_scale";
  auto dir = edited("zero", [&](io::NamedTensors& t) {
    erase(t, n);
    t.emplace_back(n, scalar_tensor(0.0f));
  });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); }, {n, "must be > 0"});
  dir = edited("vector", [&](io::NamedTensors& t) {
    erase(t, n);
    t.emplace_back(n, torch::ones({2}));
  });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); }, {n, "scalar"});
}

TEST_F(Fp8KvBadImport, AlgorithmAndTensorsMustAgree) {
  // Scales with kv_cache_quant_algo null.
  auto dir = edited("nullalgo", nullptr);
  auto j = read_json(dir / "hf_quant_config.json");
  j["quantization"]["kv_cache_quant_algo"] = nullptr;
  write_file_atomic(dir / "hf_quant_config.json", j.dump());
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); },
                          {"model.layers.0.self_attn.k_proj.k_scale", "kv_cache_quant_algo null"});
  // Another KV format.
  j["quantization"]["kv_cache_quant_algo"] = "NVFP4";
  write_file_atomic(dir / "hf_quant_config.json", j.dump());
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); },
                          {"kv_cache_quant_algo \"NVFP4\" is not supported"});
  // Lower case, as ModelOpt may write it, is FP8.
  j["quantization"]["kv_cache_quant_algo"] = "fp8";
  write_file_atomic(dir / "hf_quant_config.json", j.dump());
  EXPECT_TRUE(quant::has_fp8_kv_cache(quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32)));
  // config.json alone (no hf_quant_config.json): kv_cache_scheme {type float, num_bits 8} is FP8, as vLLM reads it.
  fs::remove(dir / "hf_quant_config.json");
  EXPECT_TRUE(quant::is_nvfp4_checkpoint(dir));
  EXPECT_TRUE(quant::has_fp8_kv_cache(quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32)));
  auto cfg = read_json(dir / "config.json");
  cfg["quantization_config"]["kv_cache_scheme"] = {{"type", "int"}, {"num_bits", 8}};
  write_file_atomic(dir / "config.json", cfg.dump());
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); },
                          {"config.json", "is not supported"});
}

}  // namespace
}  // namespace qad::testing
