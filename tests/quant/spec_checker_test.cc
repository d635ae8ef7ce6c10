// A checker written from ../shared/docs/NVFP4.md alone: it does not call qad's NVFP4 code. It has its own E2M1
// table, E4M3 decoder and round-to-nearest-even encoders (by exhaustive search over the codes), re-derives every
// scale and code of the exported checkpoint from the original weights and the calibrated amaxes, decodes every
// tensor and compares with the fake-quantized weights the model computes with, bit for bit. It also checks
// shapes, dtypes, nibble order, shared scales of fused groups, and the JSON fields vLLM requires. With an FP8 KV
// cache: every layer's k_scale / v_scale (F32 scalars, amax / 448), decoded with the checker's own E4M3 encoder
// applied to keys and values, against what the model's attention computes with. With static block scales: every
// weight_scale re-derived by the checker's own MSE search over the E4M3 codes (docs/quant.md's rule). With FP8
// layers (MIXED_PRECISION): their E4M3 weight bytes and per-tensor scales, and quantized_layers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <unistd.h>

#include "util/remove_tree.h"
#include "io/safetensors.h"
#include "quant/kv_quant.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"

namespace qad::testing {
namespace {
namespace fs = std::filesystem;

// ---- the spec, from scratch ------------------------------------------------------------------------------------
namespace spec {

constexpr float kE2M1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

float e2m1_decode(uint8_t code) { return (code & 8) ? -kE2M1[code & 7] : kE2M1[code & 7]; }

// E4M3 (fn): 1 sign, 4 exponent (bias 7), 3 mantissa bits; exponent 0 = subnormal m/8 * 2^-6; 0x7F/0xFF = NaN.
float e4m3_decode(uint8_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  float v;
  if (e == 15 && m == 7) return NAN;
  v = e == 0 ? std::ldexp(static_cast<float>(m) / 8.0f, -6) : std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
  return (b & 0x80) ? -v : v;
}

// Nearest positive E4M3 code to s (s in [2^-9, 448]), ties to the even code.
uint8_t e4m3_rne(float s) {
  uint8_t best = 0;
  double best_d = INFINITY;
  for (int c = 0; c <= 0x7E; ++c) {
    const double d = std::fabs(static_cast<double>(s) - e4m3_decode(static_cast<uint8_t>(c)));
    if (d < best_d || (d == best_d && c % 2 == 0)) best = static_cast<uint8_t>(c), best_d = d;
  }
  return best;
}

// FP8 E4M3 as the engines' KV cache stores it: the nearest code to |x| (saturating at 448, the largest finite
// code), the sign kept, decoded.
float e4m3_round_trip(float x) {
  const float v = e4m3_decode(e4m3_rne(std::fabs(x)));
  return std::signbit(x) ? -v : v;
}

// Nearest E2M1 code (sign kept, also for values that round to 0), ties to the even index, saturating at 6.
uint8_t e2m1_rne(float v) {
  const float a = std::fabs(v);
  uint8_t best = 0;
  double best_d = INFINITY;
  for (int i = 0; i < 8; ++i) {
    const double d = std::fabs(static_cast<double>(a) - kE2M1[i]);
    if (d < best_d || (d == best_d && i % 2 == 0)) best = static_cast<uint8_t>(i), best_d = d;
  }
  return static_cast<uint8_t>((std::signbit(v) ? 8 : 0) | best);
}

struct Encoded {
  std::vector<uint8_t> packed, scales;
  float global_scale;
};

// Static block scales (docs/quant.md): the code 0x01..0x7E whose block decodes with the least squared error,
// summed in float64 as (e_i + e_i+8), then +4, +2, +1; ties to the larger code; an all-zero block 1.0.
uint8_t mse_scale(const float* xb, float global_scale) {
  bool zero = true;
  for (int i = 0; i < 16; ++i) zero = zero && xb[i] == 0.0f;
  if (zero) return e4m3_rne(1.0f);
  uint8_t best = 0;
  double best_e = INFINITY;
  for (int c = 1; c <= 0x7E; ++c) {
    const float sb = e4m3_decode(static_cast<uint8_t>(c));
    double e[16];
    for (int i = 0; i < 16; ++i) {
      const float q = xb[i] == 0.0f ? xb[i] : xb[i] / (sb * global_scale);
      const double d = static_cast<double>((e2m1_decode(e2m1_rne(q)) * sb) * global_scale) - xb[i];
      e[i] = d * d;
    }
    for (int half = 8; half >= 1; half /= 2) {
      for (int i = 0; i < half; ++i) e[i] += e[i + half];
    }
    if (e[0] <= best_e) best = static_cast<uint8_t>(c), best_e = e[0];
  }
  return best;
}

// The export rule of NVFP4.md for a row-major [rows, k] float matrix and a per-tensor amax; with `static_mse` the
// block scales are mse_scale's instead of the amax-derived ones.
Encoded encode(const float* x, int64_t rows, int64_t k, float amax, bool static_mse = false) {
  Encoded e;
  e.global_scale = amax / (6.0f * 448.0f);
  e.packed.assign(static_cast<size_t>(rows * k / 2), 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < k / 16; ++b) {
      const float* xb = x + r * k + b * 16;
      float ab = 0;
      for (int i = 0; i < 16; ++i) ab = std::max(ab, std::fabs(xb[i]));
      uint8_t sc;
      if (static_mse) {
        sc = mse_scale(xb, e.global_scale);
      } else if (ab == 0.0f) {
        sc = e4m3_rne(1.0f);
      } else {
        float s = ab / (6.0f * e.global_scale);
        s = std::min(std::max(s, std::ldexp(1.0f, -9)), 448.0f);
        sc = e4m3_rne(s);
      }
      e.scales.push_back(sc);
      const float sb = e4m3_decode(sc);
      for (int i = 0; i < 16; ++i) {
        const float q = xb[i] == 0.0f ? xb[i] : xb[i] / (sb * e.global_scale);
        const uint8_t code = e2m1_rne(q);
        const int64_t col = b * 16 + i;
        e.packed[static_cast<size_t>(r * (k / 2) + col / 2)] |= static_cast<uint8_t>(col % 2 == 0 ? code : code << 4);
      }
    }
  }
  return e;
}

// Decodes [rows, k]: element 2i from the LOW nibble of byte i, 2i+1 from the high nibble.
std::vector<float> decode(const uint8_t* packed, const uint8_t* scales, float global_scale, int64_t rows, int64_t k) {
  std::vector<float> out(static_cast<size_t>(rows * k));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const uint8_t byte = packed[r * (k / 2) + c / 2];
      const uint8_t code = c % 2 == 0 ? (byte & 0x0F) : (byte >> 4);
      const float sb = e4m3_decode(scales[r * (k / 16) + c / 16]);
      out[static_cast<size_t>(r * k + c)] = (e2m1_decode(code) * sb) * global_scale;
    }
  }
  return out;
}

}  // namespace spec

// ---- reading the export with the plain safetensors reader (bytes, dtype names, shapes) -------------------------

struct Raw {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  float f32() const {
    EXPECT_EQ(bytes.size(), 4u);
    float v;
    std::memcpy(&v, bytes.data(), 4);
    return v;
  }
};

std::map<std::string, Raw> read_raw(const fs::path& dir) {
  auto ckpt = io::Checkpoint::open(dir);
  std::map<std::string, Raw> out;
  for (const auto& n : ckpt.names()) {
    const auto& e = ckpt.at(n);
    auto b = e.file->bytes(*e.info);
    Raw r{std::string(io::dtype_name(e.info->dtype)), e.info->shape, {}};
    r.bytes.resize(b.size());
    std::memcpy(r.bytes.data(), b.data(), b.size());
    out.emplace(n, std::move(r));
  }
  return out;
}

std::vector<float> as_floats(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

bool same_float_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// Parameters: the model (quant_model_dirs index), the format (W4A4 "NVFP4", or weight-only "W4A16_NVFP4":
// the same weight tensors, no input_scale, activations null in config.json), an FP8 KV cache, and static MSE block
// scales (the same layout; the block scales re-derived by the checker's own search).
class SpecChecker : public ::testing::TestWithParam<std::tuple<int, bool, bool, bool>> {};

TEST_P(SpecChecker, ExportFollowsTheSpecBitForBit) {
  const auto dir = quant_model_dirs()[static_cast<size_t>(std::get<0>(GetParam()))];
  const bool weight_only = std::get<1>(GetParam());
  const bool fp8_kv = std::get<2>(GetParam());
  const bool static_mse = std::get<3>(GetParam());
  quant::QuantConfig qcfg;
  qcfg.quantize_inputs = !weight_only;
  if (fp8_kv) qcfg.kv_cache = quant::KvCacheQuant::kFp8;
  if (static_mse) qcfg.block_scales = quant::BlockScales::kStaticMse;
  auto lm = quantized_fixture(dir, torch::kFloat32, qcfg);
  auto out = fs::temp_directory_path() / fmt::format("qad_spec_{}_{}_{}{}{}", ::getpid(), dir.filename().string(),
                                                     weight_only ? "w4a16" : "w4a4", fp8_kv ? "_kvfp8" : "",
                                                     static_mse ? "_static" : "");
  ::qad::remove_tree(out);
  quant::export_nvfp4(lm, out, dir);
  auto files = read_raw(out);
  auto source = read_raw(dir);

  // Per-group maxima of the weights' amax, computed here.
  std::map<std::string, float> group_w;
  auto group_of = [](const std::string& m) {
    auto g = quant::fused_group(m);
    return g.empty() ? m : g;
  };
  for (const auto& l : lm->linears()) {
    if (!quant::nvfp4_hook(l)) continue;
    float a = 0;
    for (float v : as_floats(l->weight)) a = std::max(a, std::fabs(v));
    group_w[group_of(l->name())] = std::max(group_w[group_of(l->name())], a);
  }

  std::map<std::string, std::pair<float, float>> group_scales;
  std::set<std::string> seen;
  int quantized = 0, static_differs = 0;
  for (const auto& l : lm->linears()) {
    const auto& p = l->name();
    auto* h = quant::nvfp4_hook(l);
    if (!h) {
      if (files.count(p + ".weight")) {
        EXPECT_EQ(files.at(p + ".weight").dtype, "F32") << p;
        EXPECT_FALSE(files.count(p + ".weight_scale")) << p;
      }
      continue;
    }
    ++quantized;
    const int64_t n = l->out_features(), k = l->in_features();
    ASSERT_EQ(k % 16, 0);
    const auto& w = files.at(p + ".weight");
    const auto& ws = files.at(p + ".weight_scale");
    const auto& ws2 = files.at(p + ".weight_scale_2");
    for (const auto* s : {".weight", ".weight_scale", ".weight_scale_2"}) seen.insert(p + s);
    EXPECT_EQ(w.dtype, "U8");
    EXPECT_EQ(w.shape, (std::vector<int64_t>{n, k / 2}));
    EXPECT_EQ(ws.dtype, "F8_E4M3");
    EXPECT_EQ(ws.shape, (std::vector<int64_t>{n, k / 16}));
    EXPECT_EQ(ws2.dtype, "F32");
    EXPECT_TRUE(ws2.shape.empty());
    // Scales: weight_scale_2 = (group max of weight amax) / 2688; input_scale = calibrated amax / 2688.
    EXPECT_TRUE(same_float_bits(ws2.f32(), group_w.at(group_of(p)) / 2688.0f)) << p;
    float input_scale = 0.0f;
    if (weight_only) {
      EXPECT_FALSE(files.count(p + ".input_scale")) << p << ": a weight-only export has no input_scale";
      EXPECT_FALSE(h->quantize_inputs) << p;
    } else {
      const auto& is = files.at(p + ".input_scale");
      seen.insert(p + ".input_scale");
      EXPECT_EQ(is.dtype, "F32");
      EXPECT_TRUE(is.shape.empty());
      EXPECT_TRUE(same_float_bits(is.f32(), h->input_amax.item<float>() / 2688.0f)) << p;
      input_scale = is.f32();
    }
    auto [it, fresh] = group_scales.emplace(group_of(p), std::make_pair(ws2.f32(), input_scale));
    if (!fresh) {
      EXPECT_TRUE(same_float_bits(it->second.first, ws2.f32())) << "weight_scale_2 not shared in " << group_of(p);
      EXPECT_TRUE(same_float_bits(it->second.second, input_scale)) << "input_scale not shared in " << group_of(p);
    }

    // Codes and block scales re-derived from the original weights.
    auto x = as_floats(l->weight);
    auto enc = spec::encode(x.data(), n, k, group_w.at(group_of(p)), static_mse);
    if (static_mse) {  // the search must matter here, or the static checks would repeat the dynamic ones
      auto dyn = spec::encode(x.data(), n, k, group_w.at(group_of(p)));
      static_differs += dyn.scales != enc.scales;
    }
    EXPECT_EQ(enc.scales, ws.bytes) << p << ": block scales";
    EXPECT_EQ(enc.packed, w.bytes) << p << ": packed codes";
    // Nibble order, spelled out on the first byte.
    EXPECT_EQ(w.bytes[0] & 0x0F, spec::e2m1_rne(x[0] / (spec::e4m3_decode(ws.bytes[0]) * ws2.f32()))) << p;
    EXPECT_EQ(w.bytes[0] >> 4, spec::e2m1_rne(x[1] / (spec::e4m3_decode(ws.bytes[0]) * ws2.f32()))) << p;

    // Decoded file == the fake-quantized weights the model computes with.
    auto dec = spec::decode(w.bytes.data(), ws.bytes.data(), ws2.f32(), n, k);
    auto fq = as_floats(h->weight(l->weight));
    ASSERT_EQ(dec.size(), fq.size());
    int64_t bad = 0;
    for (size_t i = 0; i < dec.size(); ++i) bad += !same_float_bits(dec[i], fq[i]);
    EXPECT_EQ(bad, 0) << p << ": decoded weights differ from the fake-quantized ones";
  }
  EXPECT_GT(quantized, 0);
  if (static_mse) {
    EXPECT_GT(static_differs, 0) << "no module's static block scales differ from the dynamic ones";
  }

  // The FP8 KV cache: per attention layer "<layer>.self_attn.k_proj.k_scale" and ".v_proj.v_scale", F32 scalars
  // equal to the calibrated amax / 448. Decoded: the model's attention replaces keys and values by
  // e4m3(x / scale) * scale with the scales of the file (checked on random keys and values through the layer's hook).
  const auto kv = quant::kv_hooks(lm);
  for (size_t l = 0; l < kv.size(); ++l) {
    const auto k_name = fmt::format("model.layers.{}.self_attn.k_proj.k_scale", l);
    const auto v_name = fmt::format("model.layers.{}.self_attn.v_proj.v_scale", l);
    if (!fp8_kv) {
      EXPECT_FALSE(files.count(k_name) || files.count(v_name)) << l;
      continue;
    }
    ASSERT_TRUE(files.count(k_name) && files.count(v_name)) << l;
    ASSERT_NE(kv[l], nullptr) << l;
    seen.insert(k_name);
    seen.insert(v_name);
    const auto& ks = files.at(k_name);
    const auto& vs = files.at(v_name);
    for (const auto* r : {&ks, &vs}) {
      EXPECT_EQ(r->dtype, "F32");
      EXPECT_TRUE(r->shape.empty());
      EXPECT_TRUE(std::isfinite(r->f32()) && r->f32() > 0.0f);
    }
    EXPECT_TRUE(same_float_bits(ks.f32(), kv[l]->k_amax.item<float>() / 448.0f)) << k_name;
    EXPECT_TRUE(same_float_bits(vs.f32(), kv[l]->v_amax.item<float>() / 448.0f)) << v_name;
    const auto& c = lm->config();
    auto gen = seeded_generator(100 + l);
    auto k = torch::randn({1, c.num_kv_heads, 5, c.head_dim}, gen) * (ks.f32() * 300.0f);  // some saturate
    auto v = torch::randn({1, c.num_kv_heads, 5, c.head_dim}, gen) * (vs.f32() * 300.0f);
    torch::NoGradGuard ng;
    auto [kq, vq] = kv[l]->apply(k, v, torch::Tensor());
    for (auto [x, q, scale] : {std::tuple{k, kq, ks.f32()}, std::tuple{v, vq, vs.f32()}}) {
      auto xs = as_floats(x), qs = as_floats(q);
      int64_t bad = 0;
      for (size_t i = 0; i < xs.size(); ++i) bad += !same_float_bits(qs[i], spec::e4m3_round_trip(xs[i] / scale) * scale);
      EXPECT_EQ(bad, 0) << "layer " << l << ": the KV fake quantization differs from the spec's";
    }
  }

  // Every other tensor is the source's, byte for byte.
  for (const auto& [name, raw] : files) {
    if (seen.count(name)) continue;
    ASSERT_TRUE(source.count(name)) << "unexpected tensor " << name;
    EXPECT_EQ(raw.dtype, source.at(name).dtype) << name;
    EXPECT_EQ(raw.bytes, source.at(name).bytes) << name;
  }

  // JSON fields vLLM requires.
  auto hq = read_json(out / "hf_quant_config.json");
  ASSERT_TRUE(hq.contains("producer") && hq["producer"].contains("name") && hq["producer"].contains("version"));
  const auto& q = hq["quantization"];
  const char* algo = weight_only ? "W4A16_NVFP4" : "NVFP4";
  EXPECT_EQ(q["quant_algo"], algo);
  ASSERT_TRUE(q.contains("kv_cache_quant_algo"));
  EXPECT_EQ(q["kv_cache_quant_algo"], fp8_kv ? nlohmann::json("FP8") : nlohmann::json());
  EXPECT_EQ(q["group_size"], 16);
  ASSERT_TRUE(q["exclude_modules"].is_array());
  std::vector<std::string> excluded = q["exclude_modules"];
  std::vector<std::string> expected;
  for (const auto& l : lm->linears()) {
    if (!quant::nvfp4_hook(l)) expected.push_back(l->name());
  }
  EXPECT_EQ(excluded, expected);
  EXPECT_NE(std::find(excluded.begin(), excluded.end(), "lm_head"), excluded.end());
  auto cfg = read_json(out / "config.json");
  const auto& qc = cfg["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "modelopt");
  EXPECT_EQ(qc["quant_algo"], algo);
  const nlohmann::json fp4 = {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", 16}};
  EXPECT_EQ(qc["config_groups"]["group_0"]["weights"], fp4);
  ASSERT_TRUE(qc["config_groups"]["group_0"].contains("input_activations"));
  EXPECT_EQ(qc["config_groups"]["group_0"]["input_activations"], weight_only ? nlohmann::json() : fp4);
  EXPECT_EQ(qc["config_groups"]["group_0"]["targets"], nlohmann::json::array({"Linear"}));
  EXPECT_EQ(qc["ignore"], q["exclude_modules"]);
  // vLLM's ModelOpt config reads {"type": "float", "num_bits": 8} here as an FP8 KV cache.
  ASSERT_TRUE(qc.contains("kv_cache_scheme"));
  const nlohmann::json fp8 = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
  EXPECT_EQ(qc["kv_cache_scheme"], fp8_kv ? fp8 : nlohmann::json());
  EXPECT_EQ(cfg["architectures"], read_json(dir / "config.json")["architectures"]);
  ::qad::remove_tree(out);
}

INSTANTIATE_TEST_SUITE_P(Models, SpecChecker,
                         ::testing::Combine(::testing::Range(0, 7), ::testing::Bool(), ::testing::Values(false),
                                            ::testing::Values(false)));
// NemotronH (no FP8 KV cache yet): the Mamba projections, attention, MLP, experts and shared experts.
INSTANTIATE_TEST_SUITE_P(NemotronH, SpecChecker,
                         ::testing::Combine(::testing::Values(7, 8), ::testing::Bool(), ::testing::Values(false),
                                            ::testing::Values(false)));
// With an FP8 KV cache, in both weight formats.
INSTANTIATE_TEST_SUITE_P(ModelsKvFp8, SpecChecker,
                         ::testing::Combine(::testing::Range(0, 7), ::testing::Bool(), ::testing::Values(true),
                                            ::testing::Values(false)));
// With static MSE block scales, in both weight formats (one with an FP8 KV cache too).
INSTANTIATE_TEST_SUITE_P(ModelsStaticBlockScales, SpecChecker,
                         ::testing::Combine(::testing::Range(0, 7), ::testing::Bool(), ::testing::Values(false),
                                            ::testing::Values(true)));
INSTANTIATE_TEST_SUITE_P(ModelsStaticBlockScalesKvFp8, SpecChecker,
                         ::testing::Combine(::testing::Values(4), ::testing::Values(false), ::testing::Values(true),
                                            ::testing::Values(true)));

// MoE layouts, judged from the source checkpoint's tensor names alone: every expert projection
// ("<p>.mlp.experts.<e>.{gate,up,down}_proj") is NVFP4 with its four tensors, gate and up of one expert share
// weight_scale_2 and input_scale (engines fuse them), and every router ("<p>.mlp.gate") stays in high precision
// and is listed in exclude_modules.
TEST(SpecCheckerMoe, ExpertsQuantizedPerExpertRoutersExcluded) {
  for (const char* name : {"qwen3_moe_sparse_step", "qwen3_moe_mlp_only_per_expert"}) {
    SCOPED_TRACE(name);
    const auto dir = source_dir() / "tests/fixtures/models" / name;
    auto lm = quantized_fixture(dir);
    auto out = fs::temp_directory_path() / fmt::format("qad_spec_moe_{}_{}", ::getpid(), name);
    ::qad::remove_tree(out);
    quant::export_nvfp4(lm, out, dir);
    auto files = read_raw(out);
    auto source = read_raw(dir);
    std::vector<std::string> excluded = read_json(out / "hf_quant_config.json")["quantization"]["exclude_modules"];
    auto is_excluded = [&](const std::string& m) {
      return std::find(excluded.begin(), excluded.end(), m) != excluded.end();
    };
    int experts = 0, routers = 0;
    for (const auto& [tensor, raw] : source) {
      const std::string suffix = "_proj.weight";
      if (tensor.find(".mlp.experts.") != std::string::npos && tensor.ends_with(suffix)) {
        const auto m = tensor.substr(0, tensor.size() - 7);
        for (const auto* s : {".weight_scale", ".weight_scale_2", ".input_scale"}) {
          EXPECT_TRUE(files.count(m + s)) << m << s;
        }
        EXPECT_EQ(files.at(m + ".weight").dtype, "U8") << m;
        EXPECT_FALSE(is_excluded(m)) << m;
        if (m.ends_with(".up_proj")) {
          const auto gate = m.substr(0, m.size() - 7) + "gate_proj";
          EXPECT_EQ(files.at(gate + ".weight_scale_2").bytes, files.at(m + ".weight_scale_2").bytes) << m;
          EXPECT_EQ(files.at(gate + ".input_scale").bytes, files.at(m + ".input_scale").bytes) << m;
        }
        ++experts;
      } else if (tensor.ends_with(".mlp.gate.weight")) {
        const auto m = tensor.substr(0, tensor.size() - 7);
        EXPECT_TRUE(is_excluded(m)) << m << " (router) is not in exclude_modules";
        EXPECT_EQ(files.at(tensor).bytes, raw.bytes) << m;
        EXPECT_FALSE(files.count(m + ".weight_scale")) << m;
        ++routers;
      }
    }
    const auto& moe = *lm->config().moe;
    int sparse = 0;
    for (int64_t l = 0; l < lm->config().num_layers; ++l) sparse += lm->config().is_moe_layer(l);
    EXPECT_EQ(experts, sparse * moe.num_experts * 3);
    EXPECT_EQ(routers, sparse);
    ::qad::remove_tree(out);
  }
}

// Mixed precision (MIXED_PRECISION with FP8 layers), from the spec alone: an FP8 Linear `<p>` has `<p>.weight`
// F8_E4M3 [out, in] = e4m3_rne(w / s) with s = `<p>.weight_scale` (F32 scalar, the fused group's weight amax / 448),
// `<p>.input_scale` (F32 scalar, input amax / 448); decoded e4m3(b) * s equals the fake-quantized weight bit for bit.
// NVFP4 Linears are encoded as in the dense export. hf_quant_config.json / config.json carry quantized_layers.
TEST(SpecCheckerMixed, Fp8LayersFollowTheSpec) {
  for (const auto& [name, globs] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"llama3_rope_gqa_untied", {"*.mlp.*", "lm_head"}}, {"stories260K", {"*down_proj", "*.o_proj"}}}) {
    SCOPED_TRACE(name);
    const auto dir = name == "stories260K" ? shared_dir() / "models/stories260K" : source_dir() / "tests/fixtures/models" / name;
    quant::QuantConfig qcfg;
    qcfg.fp8_layers = globs;
    auto lm = quantized_fixture(dir, torch::kFloat32, qcfg);
    auto out = fs::temp_directory_path() / fmt::format("qad_spec_mixed_{}_{}", ::getpid(), name);
    ::qad::remove_tree(out);
    quant::export_nvfp4(lm, out, dir);
    auto files = read_raw(out);
    const auto hq = read_json(out / "hf_quant_config.json")["quantization"];
    const auto qc = read_json(out / "config.json")["quantization_config"];
    EXPECT_EQ(hq["quant_algo"], "MIXED_PRECISION");
    EXPECT_EQ(qc["quant_algo"], "MIXED_PRECISION");
    EXPECT_EQ(qc["quant_method"], "modelopt");
    EXPECT_EQ(qc["quantized_layers"], hq["quantized_layers"]);
    std::map<std::string, float> group_w;
    auto group_of = [](const std::string& m) {
      auto g = quant::fused_group(m);
      return g.empty() ? m : g;
    };
    for (const auto& l : lm->linears()) {
      float a = 0;
      for (float v : as_floats(l->weight)) a = std::max(a, std::fabs(v));
      group_w[group_of(l->name())] = std::max(group_w[group_of(l->name())], a);
    }
    int fp8 = 0, fp4 = 0;
    std::vector<std::string> fp8_names;
    for (const auto& l : lm->linears()) {
      const auto& p = l->name();
      auto* h = quant::nvfp4_hook(l);
      if (h == nullptr) {
        EXPECT_FALSE(hq["quantized_layers"].contains(p)) << p;
        continue;
      }
      const int64_t n = l->out_features(), k = l->in_features();
      auto x = as_floats(l->weight);
      const auto& w = files.at(p + ".weight");
      if (!h->fp8) {
        ++fp4;
        EXPECT_EQ(hq["quantized_layers"][p], (nlohmann::json{{"quant_algo", "NVFP4"}, {"group_size", 16}})) << p;
        EXPECT_EQ(spec::encode(x.data(), n, k, group_w.at(group_of(p))).packed, w.bytes) << p;
        continue;
      }
      ++fp8;
      fp8_names.push_back(p);
      EXPECT_EQ(hq["quantized_layers"][p], (nlohmann::json{{"quant_algo", "FP8"}})) << p;
      const auto& ws = files.at(p + ".weight_scale");
      const auto& is = files.at(p + ".input_scale");
      EXPECT_FALSE(files.count(p + ".weight_scale_2")) << p;
      EXPECT_EQ(w.dtype, "F8_E4M3");
      EXPECT_EQ(w.shape, (std::vector<int64_t>{n, k}));
      for (const auto* r : {&ws, &is}) {
        EXPECT_EQ(r->dtype, "F32") << p;
        EXPECT_TRUE(r->shape.empty()) << p;
      }
      const float s = ws.f32();
      EXPECT_TRUE(same_float_bits(s, group_w.at(group_of(p)) / 448.0f)) << p;
      EXPECT_TRUE(same_float_bits(is.f32(), h->input_amax.item<float>() / 448.0f)) << p;
      auto fq = as_floats(h->weight(l->weight));
      int64_t bad_code = 0, bad_value = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        const float q = x[i] / s;
        const uint8_t code = static_cast<uint8_t>((std::signbit(q) ? 0x80 : 0) | spec::e4m3_rne(std::fabs(q)));
        bad_code += code != w.bytes[i];
        bad_value += !same_float_bits(spec::e4m3_decode(w.bytes[i]) * s, fq[i]);
      }
      EXPECT_EQ(bad_code, 0) << p << ": FP8 codes";
      EXPECT_EQ(bad_value, 0) << p << ": decoded FP8 weights differ from the fake-quantized ones";
    }
    EXPECT_GT(fp8, 0);
    EXPECT_GT(fp4, 0);
    EXPECT_EQ(hq["quantized_layers"].size(), static_cast<size_t>(fp8 + fp4));
    // config.json: one group per algo, FP8's with 8-bit float weights and static inputs, the FP8 modules as targets.
    const nlohmann::json f8 = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
    bool found = false;
    for (const auto& [g, body] : qc["config_groups"].items()) {
      if (body["weights"] != f8) continue;
      found = true;
      EXPECT_EQ(body["input_activations"], f8);
      std::sort(fp8_names.begin(), fp8_names.end());
      EXPECT_EQ(body["targets"], nlohmann::json(fp8_names));
    }
    EXPECT_TRUE(found);
    ::qad::remove_tree(out);
  }
}

TEST(SpecTables, SelfCheck) {
  // The checker's own codecs against values in NVFP4.md.
  EXPECT_EQ(spec::e4m3_decode(0x38), 1.0f);
  EXPECT_EQ(spec::e4m3_decode(0x7E), 448.0f);
  EXPECT_EQ(spec::e4m3_decode(0x01), std::ldexp(1.0f, -9));
  const std::pair<float, int> ties[] = {{0.25f, 0}, {0.75f, 2}, {1.25f, 2}, {1.75f, 4}, {2.5f, 4}, {3.5f, 6},
                                        {5.0f, 6},  {5.01f, 7}, {7.0f, 7}};
  for (auto [v, idx] : ties) EXPECT_EQ(spec::e2m1_rne(v), idx) << v;
  EXPECT_EQ(spec::e2m1_rne(-0.1f), 8);
  EXPECT_EQ(spec::e4m3_round_trip(-500.0f), -448.0f);
  EXPECT_EQ(spec::e4m3_round_trip(1.0625f), 1.0f);  // a tie: to the even code
  EXPECT_EQ(spec::e4m3_round_trip(1.1875f), 1.25f);
}

}  // namespace
}  // namespace qad::testing
