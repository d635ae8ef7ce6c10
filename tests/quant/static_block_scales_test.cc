// Static block scales (quant.block_scales: static_mse, docs/quant.md): the MSE search over E4M3 codes against a
// brute-force scalar reference written from the rule alone, never worse than the dynamic scale per block; the fake
// quantization with given scales against the fused kernels (with the codes they derive it must be the same op);
// all-zero blocks; scales frozen through a training step while the weights move; the quantizer state's round trip
// through a safetensors file; export -> import -> export byte-identical with logits bit-identical.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "io/safetensors_torch.h"
#include "nvfp4/block_scales.h"
#include "nvfp4/quantize.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"
#include "util/atomic_file.h"
#include "util/config_fields.h"

namespace qad::testing {
namespace {
namespace fs = std::filesystem;

// ---- the rule, from scratch (no qad NVFP4 code) ----------------------------------------------------------------
namespace ref {

constexpr float kE2M1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

float e4m3(int code) {  // positive codes only
  const int e = (code >> 3) & 15, m = code & 7;
  return e == 0 ? std::ldexp(static_cast<float>(m) / 8.0f, -6) : std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}

// Nearest E2M1 magnitude to |v|, ties to the even index, saturating at 6; the sign of v kept.
float e2m1_round(float v) {
  const double a = std::fabs(static_cast<double>(v));
  int best = 0;
  double best_d = INFINITY;
  for (int i = 0; i < 8; ++i) {
    const double d = std::fabs(a - kE2M1[i]);
    if (d < best_d || (d == best_d && i % 2 == 0)) best = i, best_d = d;
  }
  return std::signbit(v) ? -kE2M1[best] : kE2M1[best];
}

// x^ of one element with block scale code c and global scale sg: (e2m1(x / (s_b sg)) * s_b) * sg, ±0 kept.
float dequant(float x, int code, float sg) {
  const float sb = e4m3(code);
  const float q = x == 0.0f ? e2m1_round(x) : e2m1_round(x / (sb * sg));
  return (q * sb) * sg;
}

// The block's squared error, summed as documented: (e_i + e_i+8), then +4, +2, +1, in float64.
double block_error(const float* x, int code, float sg) {
  double e[16];
  for (int i = 0; i < 16; ++i) {
    const double d = static_cast<double>(dequant(x[i], code, sg)) - static_cast<double>(x[i]);
    e[i] = d * d;
  }
  for (int half = 8; half >= 1; half /= 2) {
    for (int i = 0; i < half; ++i) e[i] = e[i] + e[i + half];
  }
  return e[0];
}

// Every code 0x01..0x7E tried, the least error kept, ties to the larger code; an all-zero block gets 0x38.
int best_code(const float* x, float sg) {
  bool zero = true;
  for (int i = 0; i < 16; ++i) zero = zero && x[i] == 0.0f;
  if (zero) return 0x38;
  int best = 0;
  double best_e = INFINITY;
  for (int c = 1; c <= 0x7E; ++c) {
    const double e = block_error(x, c, sg);
    if (e <= best_e) best = c, best_e = e;
  }
  return best;
}

}  // namespace ref

// Rows of 16-element blocks with what makes the search interesting: normal blocks, an outlier per block, tiny
// blocks (subnormal scales), blocks with exact zeros, all-zero blocks, a block of one repeated value (ties).
torch::Tensor test_blocks(uint64_t salt) {
  auto gen = seeded_generator(salt);
  auto x = torch::randn({24, 64}, gen) * 0.05;
  x[1] = x[1] * 1e-4;                                 // block scales near the E4M3 subnormals
  x[2].narrow(0, 5, 3).fill_(0.3);                    // outliers
  x[3].narrow(0, 0, 16).zero_();                      // an all-zero block
  x[3].narrow(0, 16, 16).fill_(-0.0);                 // an all -0 block
  x[4].narrow(0, 0, 16).fill_(0.02);                  // one repeated value
  x[5] = torch::where(torch::rand({64}, gen) < 0.5, torch::zeros({64}), x[5]);  // sparse blocks
  return x.to(torch::kFloat32).contiguous();
}

std::vector<float> floats(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

TEST(StaticBlockScales, MseSearchEqualsTheBruteForceReference) {
  for (uint64_t salt : {1, 2, 3}) {
    auto x = test_blocks(salt);
    auto amax = nvfp4::compute_amax(x);
    if (salt == 3) amax = amax * 0.7;  // weights beyond the global amax: large codes saturate, the search clips
    const float sg = amax.item<float>() / 2688.0f;
    auto codes = nvfp4::mse_block_scales(x, amax);
    ASSERT_EQ(codes.scalar_type(), torch::kUInt8);
    ASSERT_EQ(codes.sizes(), torch::IntArrayRef({24, 4}));
    auto xs = floats(x);
    auto dynamic = nvfp4::quantize(x, amax).block_scales;
    int64_t better = 0;
    for (int64_t b = 0; b < codes.numel(); ++b) {
      const float* xb = xs.data() + b * 16;
      const int got = codes.view(-1)[b].item<int>();
      EXPECT_EQ(got, ref::best_code(xb, sg)) << "salt " << salt << " block " << b;
      // Never worse than the dynamic scale (one of the candidates), strictly better on some blocks.
      const int dyn = dynamic.view(-1)[b].item<int>();
      const double e_static = ref::block_error(xb, got, sg), e_dynamic = ref::block_error(xb, dyn, sg);
      EXPECT_LE(e_static, e_dynamic) << "block " << b;
      better += e_static < e_dynamic;
    }
    EXPECT_GT(better, codes.numel() / 10) << "the search should beat the amax-derived scale on many blocks";
  }
  // Ties go to the larger code. With s_g = 1 (amax 2688) a block of 1.0s is exact with s_b = 0.25, 0.5, 1 and 2
  // (elements 4, 2, 1, 0.5); the next codes (2.25, ...) are not: the search keeps 2.0 (0x40). ModelOpt's kernel,
  // which keeps the first of equal losses, would keep 0.25.
  auto ones = torch::ones({1, 16});
  EXPECT_EQ(nvfp4::mse_block_scales(ones, torch::full({}, 2688.0f)).item<int>(), 0x40);
  EXPECT_EQ(ref::best_code(floats(ones).data(), 1.0f), 0x40);
}

TEST(StaticBlockScales, AllZeroBlocksStayExact) {
  auto x = test_blocks(1);
  auto amax = nvfp4::compute_amax(x);
  auto codes = nvfp4::mse_block_scales(x, amax);
  EXPECT_EQ(codes[3][0].item<int>(), 0x38);
  EXPECT_EQ(codes[3][1].item<int>(), 0x38);
  auto y = nvfp4::fake_quantize_with_block_scales(x, codes, amax);
  auto blk = y[3].narrow(0, 0, 32);
  EXPECT_TRUE(torch::equal(blk, torch::zeros_like(blk)));
  EXPECT_TRUE(torch::signbit(y[3].narrow(0, 16, 16)).all().item<bool>()) << "-0 stays -0";
  // A whole tensor of zeros (global amax 0): every block 1.0, every value 0.
  auto z = torch::zeros({2, 32});
  auto zc = nvfp4::mse_block_scales(z, torch::zeros({}));
  EXPECT_TRUE(torch::equal(zc, torch::full({2, 2}, 0x38, torch::kUInt8)));
  EXPECT_TRUE(torch::equal(nvfp4::fake_quantize_with_block_scales(z, zc, torch::zeros({})), z));
}

// With the codes the kernels derive, the op with given scales is the kernels' fake quantization, bit for bit:
// float32 and bfloat16, a partial last block, weights beyond the amax, NaN / Inf blocks, a global amax of 0.
TEST(StaticBlockScales, WithDynamicCodesItIsTheKernelsFakeQuantization) {
  auto gen = seeded_generator(11);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (int64_t k : {64, 40}) {
      auto x = (torch::randn({9, k}, gen) * 0.1).to(dtype);
      x[0][3] = -0.0;
      x[1].fill_(0);
      for (float scale_amax : {1.0f, 0.5f, 0.0f}) {
        auto amax = nvfp4::compute_amax(x) * scale_amax;
        auto q = nvfp4::quantize(x, amax);
        auto want = nvfp4::fake_quantize(x, amax);
        auto got = nvfp4::fake_quantize_with_block_scales(x, q.block_scales, amax);
        EXPECT_TRUE(same_bits(got, want)) << c10::toString(dtype) << " k " << k << " amax x" << scale_amax;
        auto qs = nvfp4::quantize_with_block_scales(x, q.block_scales, amax);
        EXPECT_TRUE(torch::equal(qs.packed, q.packed)) << c10::toString(dtype) << " k " << k;
        EXPECT_TRUE(same_bits(nvfp4::dequantize(qs, dtype), got));
      }
      auto bad = x.clone();
      bad[2][1] = std::numeric_limits<float>::quiet_NaN();
      bad[3][0] = std::numeric_limits<float>::infinity();
      auto amax = nvfp4::compute_amax(x);
      EXPECT_TRUE(same_bits(nvfp4::fake_quantize_with_block_scales(bad, nvfp4::quantize(x, amax).block_scales, amax),
                            nvfp4::fake_quantize(bad, amax)));
    }
  }
  // Wrong codes are refused with the shapes named.
  expect_error_containing([] { nvfp4::fake_quantize_with_block_scales(torch::zeros({2, 32}), torch::zeros({2, 3},
                                                                      torch::kUInt8), torch::ones({})); },
                          {"block scales", "[2, 2]"});
}

// The scales chosen are used: the given codes decide every element (a scalar check of the op itself).
TEST(StaticBlockScales, FakeQuantizationFollowsTheGivenCodes) {
  auto x = test_blocks(4);
  auto amax = nvfp4::compute_amax(x);
  const float sg = amax.item<float>() / 2688.0f;
  auto codes = torch::randint(1, 0x7F, {24, 4}, seeded_generator(5), torch::kLong).to(torch::kUInt8);
  auto y = floats(nvfp4::fake_quantize_with_block_scales(x, codes, amax));
  auto xs = floats(x);
  int64_t bad = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const float want = ref::dequant(xs[i], codes.view(-1)[static_cast<int64_t>(i / 16)].item<int>(), sg);
    bad += std::memcmp(&want, &y[i], 4) != 0;
  }
  EXPECT_EQ(bad, 0);
}

quant::QuantConfig static_config() {
  quant::QuantConfig c;
  c.block_scales = quant::BlockScales::kStaticMse;
  return c;
}

TEST(StaticBlockScales, CalibrateChoosesThemFromTheSharedWeightAmax) {
  const auto dir = source_dir() / "tests/fixtures/models/llama3_rope_gqa_untied";
  auto lm = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(lm, static_config());
  auto ids = torch::randint(256, {1, 8}, seeded_generator(1), torch::kLong);
  // In W4A16 nothing else would stop a forward before calibration: the unchosen static scales do.
  for (const auto& l : lm->linears()) {
    if (auto* h = quant::nvfp4_hook(l)) {
      h->quantize_inputs = false;
      EXPECT_TRUE(h->static_block_scales);
      EXPECT_FALSE(h->block_scale.defined());
    }
  }
  expect_error_containing([&] { lm->forward(ids); }, {"static block scales are not chosen yet", "calibrate"});
  quant::calibrate(lm, random_batches(lm->config().vocab_size, 2, 2, 12, 3), static_config());
  int64_t differ = 0, total = 0;
  for (const auto& l : lm->linears()) {
    auto* h = quant::nvfp4_hook(l);
    if (h == nullptr) continue;
    auto w = l->weight.detach();
    ASSERT_TRUE(h->block_scale.defined()) << l->name();
    EXPECT_TRUE(torch::equal(h->block_scale, nvfp4::mse_block_scales(w, h->weight_amax))) << l->name();
    const auto dyn = nvfp4::quantize(w, h->weight_amax).block_scales;
    differ += h->block_scale.ne(dyn).sum().item<int64_t>();
    total += dyn.numel();
    // The weight forward is the fake quantization with these scales.
    EXPECT_TRUE(same_bits(h->weight(l->weight).detach(),
                          nvfp4::fake_quantize_with_block_scales(w, h->block_scale, h->weight_amax)));
  }
  EXPECT_GT(differ, total / 10) << "static scales equal to the dynamic ones would make these tests vacuous";
  // Fused groups share the weight amax, so their block scales are searched against the shared global scale.
  auto* q = quant::nvfp4_hook(lm->model->layer_list[0]->self_attn->q_proj);
  auto* k = quant::nvfp4_hook(lm->model->layer_list[0]->self_attn->k_proj);
  ASSERT_TRUE(q != nullptr && k != nullptr);
  EXPECT_TRUE(torch::equal(q->weight_amax, k->weight_amax));
}

// A training step: the weights move (straight-through gradient), the block scales do not, and the next forward
// quantizes the new weights with the same scales (the cache refreshed once).
TEST(StaticBlockScales, FrozenThroughATrainingStep) {
  const auto dir = source_dir() / "tests/fixtures/models/llama3_rope_gqa_untied";
  auto lm = quantized_fixture(dir, torch::kFloat32, static_config());
  std::vector<torch::Tensor> before;
  for (const auto& l : lm->linears()) {
    if (auto* h = quant::nvfp4_hook(l)) before.push_back(h->block_scale.clone());
  }
  auto ids = torch::randint(256, {2, 10}, seeded_generator(9), torch::kLong);
  lm->forward(ids).logits.pow(2).mean().backward();
  auto w0 = lm->linears()[0]->weight.detach().clone();
  {
    torch::NoGradGuard ng;
    for (auto& p : lm->parameters()) {
      if (p.grad().defined()) p.add_(p.grad(), -0.5);
    }
  }
  EXPECT_FALSE(torch::equal(w0, lm->linears()[0]->weight)) << "the step must move the weights";
  size_t i = 0;
  for (const auto& l : lm->linears()) {
    auto* h = quant::nvfp4_hook(l);
    if (h == nullptr) continue;
    EXPECT_TRUE(torch::equal(h->block_scale, before[i++])) << l->name() << ": the block scales moved";
    const auto misses = h->weight_cache_misses;
    auto fq = h->weight(l->weight).detach();
    EXPECT_EQ(h->weight_cache_misses, misses + 1) << l->name();
    EXPECT_TRUE(same_bits(fq, nvfp4::fake_quantize_with_block_scales(l->weight.detach(), before[i - 1],
                                                                     h->weight_amax)));
    h->weight(l->weight);
    EXPECT_EQ(h->weight_cache_misses, misses + 1) << l->name() << ": the second call must hit the cache";
  }
  // The clipped STE with static scales: zero gradient where |w| > amax, the scales still used in the forward.
  auto* h = quant::nvfp4_hook(lm->linears()[0]);
  h->ste = nvfp4::StraightThrough::kClipped;
  auto w = lm->linears()[0]->weight;
  const float a = h->weight_amax.item<float>();
  {
    torch::NoGradGuard ng;
    w[0][0] = a * 2;
    w[0][1] = a * 0.5f;
  }
  if (w.grad().defined()) w.mutable_grad().reset();
  auto y = h->weight(w);
  EXPECT_TRUE(same_bits(y.detach(), nvfp4::fake_quantize_with_block_scales(w.detach(), h->block_scale,
                                                                           h->weight_amax)));
  y.sum().backward();
  EXPECT_EQ(w.grad()[0][0].item<float>(), 0.0f);
  EXPECT_EQ(w.grad()[0][1].item<float>(), 1.0f);
}

TEST(StaticBlockScales, QuantizerStateRoundTripsThroughAFile) {
  const auto dir = source_dir() / "tests/fixtures/models/qwen3_qknorm_headdim_tied";
  auto lm = quantized_fixture(dir, torch::kFloat32, static_config());
  auto state = quant::quantizer_state(lm);
  int64_t scales = 0;
  for (const auto& [name, t] : state) {
    if (!name.ends_with(".weight_quantizer._block_scale")) continue;
    ++scales;
    EXPECT_EQ(t.scalar_type(), torch::kUInt8) << name;
  }
  EXPECT_EQ(scales, 3 * 7);
  const auto file = scratch_dir("qad_static_state", "q") / "quantizer.safetensors";
  fs::create_directories(file.parent_path());
  io::write_tensors(file, state);
  auto loaded = io::read_tensors(file);
  auto ids = torch::randint(256, {2, 12}, seeded_generator(5), torch::kLong);
  auto want = lm->forward(ids).logits;
  auto fresh = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::load_quantizer_state(fresh, loaded, {});
  EXPECT_TRUE(quant::has_static_block_scales(fresh));
  EXPECT_TRUE(same_bits(fresh->forward(ids).logits, want));
  // Without the block scales the same amaxes give the dynamic model: another result.
  decltype(state) amaxes_only;
  for (const auto& e : state) {
    if (!e.first.ends_with("._block_scale")) amaxes_only.push_back(e);
  }
  auto dynamic = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::load_quantizer_state(dynamic, amaxes_only, {});
  EXPECT_FALSE(quant::has_static_block_scales(dynamic));
  EXPECT_FALSE(same_bits(dynamic->forward(ids).logits, want));

  const auto name = state[0].first.substr(0, state[0].first.find(".input_quantizer")) + ".weight_quantizer._block_scale";
  auto bad = state;
  for (auto& [n, t] : bad) {
    if (n == name) t = t.narrow(1, 0, 1).clone();
  }
  expect_error_containing([&] { quant::load_quantizer_state(fresh, bad, {}); }, {name, "shape"});
  bad = state;
  for (auto& [n, t] : bad) {
    if (n == name) {
      t = t.clone();  // the state's tensors are shared with `bad`'s copy
      t[0][0] = 0x7F;
    }
  }
  expect_error_containing([&] { quant::load_quantizer_state(fresh, bad, {}); }, {name, "NaN"});
  bad.clear();  // q_proj's amaxes gone, its block scales left
  for (const auto& e : state) {
    if (!e.first.ends_with("._amax") || e.first.find(".q_proj.") == std::string::npos) bad.push_back(e);
  }
  expect_error_containing([&] { quant::load_quantizer_state(fresh, bad, {}); }, {"._block_scale", "has no"});
  ::qad::remove_tree(file.parent_path());
}

// Export -> import -> export: byte-identical files, bit-identical logits (the import keeps the file's block scales;
// re-quantizing its weights with them is the identity), on every fixture in both formats and in BF16.
class StaticRoundTrip : public ::testing::TestWithParam<std::tuple<int, bool, torch::ScalarType>> {};

TEST_P(StaticRoundTrip, ExportImportExportIsByteIdentical) {
  const auto dir = quant_model_dirs()[static_cast<size_t>(std::get<0>(GetParam()))];
  auto cfg = static_config();
  cfg.quantize_inputs = !std::get<1>(GetParam());
  const auto dtype = std::get<2>(GetParam());
  auto lm = quantized_fixture(dir, dtype, cfg);
  auto ids = torch::randint(lm->config().vocab_size, {2, 12}, seeded_generator(8), torch::kLong);
  auto want = lm->forward(ids).logits;
  const auto tag = fmt::format("{}_{}_{}", dir.filename().string(), cfg.quantize_inputs, c10::toString(dtype));
  auto out = scratch_dir("qad_static_rt", tag);
  quant::export_nvfp4(lm, out, dir);
  auto back = quant::load_nvfp4(out, torch::kCPU, dtype);
  EXPECT_TRUE(same_bits(back->forward(ids).logits, want));
  quant::enable_weight_fake_quant(back);  // what --student does: the file's scales re-quantize to the same values
  EXPECT_TRUE(same_bits(back->forward(ids).logits, want));
  auto again = scratch_dir("qad_static_rt_again", tag);
  quant::export_nvfp4(back, again, dir);
  for (const auto* f : {"model.safetensors", "config.json", "hf_quant_config.json"}) {
    if (!fs::exists(out / f)) continue;  // sharded fixtures
    EXPECT_EQ(read_file(out / f), read_file(again / f)) << f << " of " << dir;
  }
  auto a = io::read_tensors(out), b = io::read_tensors(again);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
  // Back to dynamic block scales (a --student run with block_scales dynamic): the model computes differently.
  quant::use_dynamic_block_scales(back);
  EXPECT_FALSE(quant::has_static_block_scales(back));
  EXPECT_FALSE(same_bits(back->forward(ids).logits, want)) << dir;
  ::qad::remove_tree(out);
  ::qad::remove_tree(again);
}

INSTANTIATE_TEST_SUITE_P(Models, StaticRoundTrip,
                         ::testing::Combine(::testing::Range(0, 7), ::testing::Bool(),
                                            ::testing::Values(torch::kFloat32)));
INSTANTIATE_TEST_SUITE_P(Bf16, StaticRoundTrip,
                         ::testing::Combine(::testing::Values(0, 3), ::testing::Values(false),
                                            ::testing::Values(torch::kBFloat16)));

TEST(StaticBlockScales, ConfigKey) {
  auto c = quant::quant_config_from_json({{"block_scales", "static_mse"}});
  EXPECT_EQ(c.block_scales, quant::BlockScales::kStaticMse);
  EXPECT_EQ(config::to_json(c)["block_scales"], "static_mse");
  EXPECT_EQ(config::to_json(quant::QuantConfig{})["block_scales"], "dynamic");
  expect_error_containing([] { quant::quant_config_from_json({{"block_scales", "static"}}); },
                          {"block_scales", "dynamic, static_mse"});
}

}  // namespace
}  // namespace qad::testing
