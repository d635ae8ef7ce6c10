// Mixed precision (quant.fp8_layers, docs/quant.md "Mixed precision: FP8 layers"): which Linears become FP8, their
// fake quantization against a scalar E4M3 reference written here, the quantizer state, and the MIXED_PRECISION
// export: JSON as ModelOpt writes it, export -> import -> export byte-identical with bit-identical logits, a
// ModelOpt-style checkpoint (config.json only, no exclude_modules) imported exactly, W4A4 + W4A16 layers in one
// export, malformed checkpoints refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>

#include "io/safetensors_torch.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"
#include "util/atomic_file.h"

namespace qad::testing {
namespace {
namespace fs = std::filesystem;

// E4M3 (fn) from its definition: the nearest finite code to |v| (ties to the even code, saturating at 448), signed.
float e4m3_value(int code) {
  const int e = (code >> 3) & 15, m = code & 7;
  return e == 0 ? std::ldexp(static_cast<float>(m) / 8.0f, -6) : std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}
float e4m3_round(float v) {
  const double a = std::fabs(static_cast<double>(v));
  int best = 0;
  double best_d = INFINITY;
  for (int c = 0; c <= 0x7E; ++c) {
    const double d = std::fabs(a - e4m3_value(c));
    if (d < best_d || (d == best_d && c % 2 == 0)) best = c, best_d = d;
  }
  return std::signbit(v) ? -e4m3_value(best) : e4m3_value(best);
}

std::vector<float> floats(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// e4m3(x / s) * s per element, s = amax / 448 (float32), against what the hook computes.
int64_t fp8_mismatches(const torch::Tensor& x, float amax, const torch::Tensor& got) {
  const float s = amax / 448.0f;
  auto xs = floats(x), gs = floats(got);
  int64_t bad = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const float want = e4m3_round(xs[i] / s) * s;
    bad += std::memcmp(&want, &gs[i], 4) != 0;
  }
  return bad;
}

fs::path llama() { return source_dir() / "tests/fixtures/models/llama3_rope_gqa_untied"; }

quant::QuantConfig fp8_config(std::vector<std::string> globs) {
  quant::QuantConfig c;
  c.fp8_layers = std::move(globs);
  return c;
}

TEST(MixedFp8, WhichLinearsBecomeFp8) {
  auto lm = model::CausalLM::load(llama(), torch::kCPU, torch::kFloat32);
  // lm_head is excluded by default but fp8_layers wins; q_proj alone is part of a fused group: it stays NVFP4.
  quant::apply_nvfp4(lm, fp8_config({"lm_head", "*.q_proj", "model.layers.0.mlp.*"}));
  for (const auto& l : lm->linears()) {
    auto* h = quant::nvfp4_hook(l);
    ASSERT_NE(h, nullptr) << l->name();
    const bool want = l->name() == "lm_head" || l->name().starts_with("model.layers.0.mlp.");
    EXPECT_EQ(h->fp8, want) << l->name();
    EXPECT_FALSE(h->fp8 && h->static_block_scales) << l->name();
  }
  // A tied lm_head is never FP8; FP8 takes any input size (stories260K's down_proj has K = 172, not NVFP4's 16k).
  auto stories = model::CausalLM::load(shared_dir() / "models/stories260K", torch::kCPU, torch::kFloat32);
  quant::apply_nvfp4(stories, fp8_config({"lm_head", "*down_proj"}));
  EXPECT_EQ(quant::nvfp4_hook(stories->lm_head), nullptr);
  auto* down = quant::nvfp4_hook(stories->model->layer_list[0]->mlp->down_proj);
  ASSERT_NE(down, nullptr);
  EXPECT_TRUE(down->fp8);
  EXPECT_NE(stories->model->layer_list[0]->mlp->down_proj->in_features() % 16, 0);
}

TEST(MixedFp8, FakeQuantizationIsPerTensorE4m3OfWeightAndInput) {
  auto cfg = fp8_config({"*.mlp.*", "lm_head"});
  cfg.method = quant::CalibMethod::kMse;  // FP8 layers stay max-calibrated
  auto lm = quantized_fixture(llama(), torch::kFloat32, cfg);
  int64_t fp8 = 0;
  for (const auto& l : lm->linears()) {
    auto* h = quant::nvfp4_hook(l);
    if (h == nullptr || !h->fp8) continue;
    ++fp8;
    // Weight amax: max |w| over the fused group (gate/up share it, as the engines' one GEMM needs).
    float a = 0;
    const auto g = quant::fused_group(l->name());
    for (const auto& m : lm->linears()) {
      if (m->name() == l->name() || (!g.empty() && quant::fused_group(m->name()) == g)) {
        a = std::max(a, m->weight.detach().abs().max().item<float>());
      }
    }
    EXPECT_EQ(h->weight_amax.item<float>(), a) << l->name();
    EXPECT_EQ(fp8_mismatches(l->weight, a, h->weight(l->weight)), 0) << l->name();
    auto x = torch::randn({3, l->in_features()}, seeded_generator(2)) * h->input_amax.item<float>() * 0.6;
    torch::NoGradGuard ng;
    EXPECT_EQ(fp8_mismatches(x, h->input_amax.item<float>(), h->input(x)), 0) << l->name();
    EXPECT_FALSE(h->fused_input(torch::kCPU).has_value()) << "the fused kernels quantize to NVFP4 only";
  }
  EXPECT_EQ(fp8, 3 * lm->config().num_layers + 1);
  // Gradients pass straight through (identity STE).
  auto ids = torch::randint(256, {1, 8}, seeded_generator(4), torch::kLong);
  lm->forward(ids).logits.sum().backward();
  EXPECT_GT(lm->lm_head->weight.grad().abs().sum().item<float>(), 0.0f);
}

TEST(MixedFp8, QuantizerStateCarriesTheFormat) {
  auto lm = quantized_fixture(llama(), torch::kFloat32, fp8_config({"*.mlp.*"}));
  auto state = quant::quantizer_state(lm);
  int64_t markers = 0;
  for (const auto& [name, t] : state) {
    if (!name.ends_with(".weight_quantizer._num_bits")) continue;
    ++markers;
    EXPECT_TRUE(t.equal(torch::tensor(std::vector<int64_t>{4, 3}))) << name;
  }
  EXPECT_EQ(markers, 3 * lm->config().num_layers);
  auto ids = torch::randint(256, {2, 10}, seeded_generator(5), torch::kLong);
  auto want = lm->forward(ids).logits;
  auto fresh = model::CausalLM::load(llama(), torch::kCPU, torch::kFloat32);
  quant::QuantConfig weight_only;
  weight_only.quantize_inputs = false;  // FP8 layers stay W8A8 whatever the run's quantize_inputs says
  quant::load_quantizer_state(fresh, state, {});
  EXPECT_TRUE(same_bits(fresh->forward(ids).logits, want));
  decltype(state) nvfp4_only;
  for (const auto& e : state) {
    if (!e.first.ends_with("._num_bits")) nvfp4_only.push_back(e);
  }
  quant::load_quantizer_state(fresh, nvfp4_only, {});
  EXPECT_FALSE(same_bits(fresh->forward(ids).logits, want)) << "the marker must decide the format";
  quant::load_quantizer_state(fresh, state, weight_only);
  for (const auto& l : fresh->linears()) {
    if (auto* h = quant::nvfp4_hook(l)) {
      EXPECT_EQ(h->quantize_inputs, h->fp8) << l->name();
    }
  }
  auto bad = state;
  for (auto& [n, t] : bad) {
    if (n.ends_with("._num_bits")) t = torch::tensor(std::vector<int64_t>{2, 1});
  }
  expect_error_containing([&] { quant::load_quantizer_state(fresh, bad, {}); }, {"_num_bits", "(4, 3)"});
}

// Export -> import -> export: byte-identical, and the import computes bit-identical logits.
void check_round_trip(model::CausalLM lm, const fs::path& dir, const std::string& tag,
                      torch::ScalarType dtype = torch::kFloat32) {
  auto ids = torch::randint(lm->config().vocab_size, {2, 12}, seeded_generator(8), torch::kLong);
  auto want = lm->forward(ids).logits;
  auto out = scratch_dir("qad_mixed", tag), again = scratch_dir("qad_mixed_again", tag);
  EXPECT_EQ(quant::export_nvfp4(lm, out, dir), quant::NvFp4Format::kMixed);
  ASSERT_TRUE(quant::is_nvfp4_checkpoint(out));
  auto back = quant::load_nvfp4(out, torch::kCPU, dtype);
  EXPECT_EQ(quant::quantized_modules(back), quant::quantized_modules(lm));
  EXPECT_TRUE(same_bits(back->forward(ids).logits, want)) << tag;
  quant::enable_weight_fake_quant(back);  // re-quantizing the imported values is the identity
  EXPECT_TRUE(same_bits(back->forward(ids).logits, want)) << tag;
  quant::export_nvfp4(back, again, dir);
  for (const auto* f : {"model.safetensors", "config.json", "hf_quant_config.json"}) {
    EXPECT_EQ(read_file(out / f), read_file(again / f)) << f << " of " << tag;
  }
  ::qad::remove_tree(out);
  ::qad::remove_tree(again);
}

TEST(MixedFp8, ExportIsModelOptMixedPrecisionAndRoundTrips) {
  auto cfg = fp8_config({"*.mlp.*", "lm_head"});
  auto lm = quantized_fixture(llama(), torch::kFloat32, cfg);
  auto out = scratch_dir("qad_mixed_json", "llama");
  quant::export_nvfp4(lm, out, llama());
  const auto hq = read_json(out / "hf_quant_config.json")["quantization"];
  EXPECT_EQ(hq["quant_algo"], "MIXED_PRECISION");
  EXPECT_TRUE(hq["kv_cache_quant_algo"].is_null());
  const auto& layers = hq["quantized_layers"];
  for (const auto& l : lm->linears()) {
    const bool fp8 = quant::nvfp4_hook(l)->fp8;
    const nlohmann::json want = fp8 ? nlohmann::json{{"quant_algo", "FP8"}}
                                    : nlohmann::json{{"quant_algo", "NVFP4"}, {"group_size", 16}};
    EXPECT_EQ(layers.at(l->name()), want) << l->name();
  }
  EXPECT_EQ(layers.size(), lm->linears().size());
  EXPECT_EQ(hq["exclude_modules"], nlohmann::json::array());
  const auto qc = read_json(out / "config.json")["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "modelopt");
  EXPECT_EQ(qc["quant_algo"], "MIXED_PRECISION");
  EXPECT_EQ(qc["quantized_layers"], layers);
  const nlohmann::json fp4 = {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", 16}};
  const nlohmann::json fp8 = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
  EXPECT_EQ(qc["config_groups"]["group_0"]["weights"], fp4);
  EXPECT_EQ(qc["config_groups"]["group_0"]["input_activations"], fp4);
  EXPECT_EQ(qc["config_groups"]["group_1"]["weights"], fp8);
  EXPECT_EQ(qc["config_groups"]["group_1"]["input_activations"], fp8);
  const std::vector<std::string> fp8_targets = qc["config_groups"]["group_1"]["targets"];
  EXPECT_EQ(fp8_targets.size(), static_cast<size_t>(3 * lm->config().num_layers + 1));
  EXPECT_EQ(fp8_targets.front(), "lm_head");
  // The FP8 tensors as vLLM's ModelOpt FP8 loader reads them.
  for (const auto& [name, t] : io::read_tensors(out)) {
    if (name == "lm_head.weight") {
      EXPECT_EQ(t.numel(), lm->lm_head->weight.numel());
    }
    if (name == "lm_head.weight_scale" || name == "lm_head.input_scale") {
      EXPECT_EQ(t.scalar_type(), torch::kFloat32) << name;
      EXPECT_EQ(t.dim(), 0) << name;
    }
  }
  ::qad::remove_tree(out);
  check_round_trip(lm, llama(), "llama");
  // BF16, an FP8 KV cache, stories260K (FP8 down_proj with K = 172) and an MoE fixture (FP8 experts).
  auto kv = cfg;
  kv.kv_cache = quant::KvCacheQuant::kFp8;
  check_round_trip(quantized_fixture(llama(), torch::kBFloat16, kv), llama(), "llama_bf16_kv", torch::kBFloat16);
  const auto stories = shared_dir() / "models/stories260K";
  check_round_trip(quantized_fixture(stories, torch::kFloat32, fp8_config({"*down_proj"})), stories, "stories");
  const auto moe = quant_model_dirs()[5];
  check_round_trip(quantized_fixture(moe, torch::kFloat32, fp8_config({"*.experts.1.*"})), moe, "moe");
}

// W4A4 and weight-only NVFP4 layers in one model: MIXED_PRECISION with NVFP4 and W4A16_NVFP4 entries (vLLM's
// ModelOptMixedPrecisionConfig serves both), no input_scale for the weight-only ones.
TEST(MixedFp8, W4a4AndW4a16LayersExportAsMixedPrecision) {
  auto cfg = quant::QuantConfig{};
  cfg.overrides.push_back({"*.mlp.*", std::nullopt, false});
  auto lm = quantized_fixture(llama(), torch::kFloat32, cfg);
  auto out = scratch_dir("qad_mixed_w4a16", "llama");
  EXPECT_EQ(quant::export_nvfp4(lm, out, llama()), quant::NvFp4Format::kMixed);
  const auto layers = read_json(out / "hf_quant_config.json")["quantization"]["quantized_layers"];
  const auto qc = read_json(out / "config.json")["quantization_config"];
  EXPECT_TRUE(qc["config_groups"]["group_1"]["input_activations"].is_null());
  auto tensors = io::read_tensors(out);
  for (const auto& l : lm->linears()) {
    if (quant::nvfp4_hook(l) == nullptr) continue;
    const bool w4a16 = l->name().find(".mlp.") != std::string::npos;
    EXPECT_EQ(layers.at(l->name())["quant_algo"], w4a16 ? "W4A16_NVFP4" : "NVFP4") << l->name();
    bool has_input_scale = false;
    for (const auto& [n, t] : tensors) has_input_scale |= n == l->name() + ".input_scale";
    EXPECT_EQ(has_input_scale, !w4a16) << l->name();
  }
  ::qad::remove_tree(out);
  check_round_trip(lm, llama(), "w4a16_mix");
}

// A checkpoint as ModelOpt writes it: config.json's quantization_config only (no hf_quant_config.json), no
// exclude_modules, lower-case algo names.
TEST(MixedFp8, ImportsModelOptLayout) {
  auto lm = quantized_fixture(llama(), torch::kFloat32, fp8_config({"*.mlp.*"}));
  auto ids = torch::randint(256, {2, 12}, seeded_generator(8), torch::kLong);
  auto want = lm->forward(ids).logits;
  auto out = scratch_dir("qad_mixed_modelopt", "llama");
  quant::export_nvfp4(lm, out, llama());
  auto config = read_json(out / "config.json");
  auto& qc = config["quantization_config"];
  for (auto& [m, v] : qc["quantized_layers"].items()) {
    if (v["quant_algo"] == "FP8") v["quant_algo"] = "fp8";
  }
  qc.erase("ignore");
  qc["producer"] = {{"name", "modelopt"}, {"version", "0.29.0"}};
  write_file_atomic(out / "config.json", config.dump(2));
  fs::remove(out / "hf_quant_config.json");
  ASSERT_TRUE(quant::is_nvfp4_checkpoint(out));
  EXPECT_TRUE(same_bits(quant::load_nvfp4(out, torch::kCPU, torch::kFloat32)->forward(ids).logits, want));

  // Refused, naming what is wrong.
  auto broken = config;
  broken["quantization_config"]["quantized_layers"]["model.layers.9.mlp.up_proj"] = {{"quant_algo", "FP8"}};
  write_file_atomic(out / "config.json", broken.dump(2));
  expect_error_containing([&] { quant::load_nvfp4(out, torch::kCPU, torch::kFloat32); },
                          {"model.layers.9.mlp.up_proj", "no Linear"});
  broken = config;
  broken["quantization_config"]["quantized_layers"]["model.layers.0.mlp.up_proj"] = {{"quant_algo", "INT8"}};
  write_file_atomic(out / "config.json", broken.dump(2));
  expect_error_containing([&] { quant::load_nvfp4(out, torch::kCPU, torch::kFloat32); },
                          {"model.layers.0.mlp.up_proj", "INT8"});
  broken = config;
  broken["quantization_config"]["quantized_layers"].erase("model.layers.0.mlp.up_proj");
  write_file_atomic(out / "config.json", broken.dump(2));
  expect_error_containing([&] { quant::load_nvfp4(out, torch::kCPU, torch::kFloat32); },
                          {"model.layers.0.mlp.up_proj", "not in quantized_layers"});
  ::qad::remove_tree(out);
}

TEST(MixedFp8, ConfigKey) {
  auto c = quant::quant_config_from_json({{"fp8_layers", {"lm_head", "*down_proj"}}});
  EXPECT_EQ(c.fp8_layers, (std::vector<std::string>{"lm_head", "*down_proj"}));
  EXPECT_TRUE(quant::quant_config_from_json({}).fp8_layers.empty());
}

}  // namespace
}  // namespace qad::testing
