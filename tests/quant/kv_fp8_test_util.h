// Helpers of the FP8 KV-cache tests (CPU and GPU): the element-by-element reference with the host E4M3 codec,
// probe values, and a tiny model whose only quantization is a calibrated FP8 KV cache.
#pragma once
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "model/generate_test_util.h"
#include "nvfp4/e4m3.h"
#include "quant/kv_quant.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"

namespace qad::testing {

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The reference: element by element, e4m3(x / scale) * scale with the host codec, then x's dtype.
inline torch::Tensor reference_fp8(const torch::Tensor& x, float scale) {
  auto xf = x.detach().to(torch::kFloat32).contiguous();
  auto out = torch::empty_like(xf);
  const float* in = xf.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < xf.numel(); ++i) o[i] = nvfp4::e4m3_decode(nvfp4::e4m3_encode(in[i] / scale)) * scale;
  return out.to(x.scalar_type());
}

inline torch::Tensor scalar_tensor(float v) { return torch::full({}, v, torch::kFloat32); }

// Values that exercise every branch: all BF16 bit patterns (every exponent, ±0, subnormals, ±Inf, NaN), E4M3
// grid points, the midpoints between neighbours (ties) and the floats next to them, and random values.
inline torch::Tensor probe_values() {
  std::vector<float> v;
  for (uint32_t b = 0; b < 65536; ++b) v.push_back(bits_float(b << 16));
  for (int c = 0; c < 0x7E; ++c) {
    const float a = nvfp4::e4m3_decode(static_cast<uint8_t>(c)), b = nvfp4::e4m3_decode(static_cast<uint8_t>(c + 1));
    const float mid = a + (b - a) / 2;
    for (float x : {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), b}) {
      v.push_back(x);
      v.push_back(-x);
    }
  }
  for (float x : {448.0f, 463.99f, 464.0f, 464.01f, 480.0f, 1e30f}) v.push_back(x);
  auto gen = seeded_generator(41);
  auto r = torch::randn({1 << 16}, gen) * torch::pow(2.0, torch::randint(-14, 12, {1 << 16}, gen).to(torch::kFloat32));
  auto all = torch::cat({torch::tensor(v), r});
  return all;
}

// A model whose only quantization is the FP8 KV cache, with scales calibrated on random ids.
inline model::CausalLM kv_only_model(const std::string& arch, uint64_t salt) {
  auto lm = model::tiny_model(arch, false, salt);
  auto calibrated = model::tiny_model(arch, false, salt);
  quant::QuantConfig cfg;
  cfg.kv_cache = quant::KvCacheQuant::kFp8;
  quant::apply_nvfp4(calibrated, cfg);
  quant::calibrate(calibrated, random_batches(96, 2, 2, 24, salt), cfg);
  std::vector<std::pair<std::string, torch::Tensor>> kv_state;
  for (auto& [n, t] : quant::quantizer_state(calibrated)) {
    if (n.ends_with("_scale")) kv_state.emplace_back(n, t);
  }
  EXPECT_EQ(kv_state.size(), 2 * static_cast<size_t>(lm->config().num_layers));
  quant::load_quantizer_state(lm, kv_state, cfg);
  EXPECT_TRUE(quant::quantized_modules(lm).empty());
  EXPECT_TRUE(quant::has_fp8_kv_cache(lm));
  return lm;
}

}  // namespace qad::testing
