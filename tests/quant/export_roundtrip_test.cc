// Export -> import: the imported NVFP4 checkpoint computes bit-identical logits to the fake-quantized model it
// was exported from (FP32 on every fixture and stories260K, BF16 on one), the export is atomic, and bad
// checkpoints are refused with the file and tensor named.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>

#include "util/remove_tree.h"
#include "io/safetensors_torch.h"
#include "io/safetensors_writer.h"
#include "nvfp4/quantize.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"
#include "util/atomic_file.h"

namespace qad::testing {
namespace {
namespace fs = std::filesystem;

fs::path scratch(const std::string& name) { return scratch_dir("qad_quant", name); }

class RoundTrip : public ::testing::TestWithParam<std::tuple<int, torch::ScalarType>> {};

TEST_P(RoundTrip, ImportedLogitsAreBitIdentical) {
  const auto dir = quant_model_dirs()[std::get<0>(GetParam())];
  const auto dtype = std::get<1>(GetParam());
  auto lm = quantized_fixture(dir, dtype);
  const int64_t vocab = lm->config().vocab_size;
  auto ids = torch::randint(vocab, {2, 33}, seeded_generator(17), torch::kLong);
  ids[0][0] = 1;
  auto mask = torch::ones({2, 33}, torch::kLong);
  mask[1].narrow(0, 0, 5).fill_(0);
  model::ForwardOptions o;
  o.attention_mask = mask;
  auto want = lm->forward(ids, o).logits;

  auto out = scratch(dir.filename().string() + "_" + model::dtype_config_name(dtype));
  quant::export_nvfp4(lm, out, dir);
  ASSERT_TRUE(quant::is_nvfp4_checkpoint(out));
  EXPECT_FALSE(quant::is_nvfp4_checkpoint(dir));
  auto back = quant::load_nvfp4(out, torch::kCPU, dtype);
  EXPECT_EQ(quant::quantized_modules(back), quant::quantized_modules(lm));
  auto got = back->forward(ids, o).logits;
  EXPECT_TRUE(same_bits(got, want)) << dir;
  // The weights themselves equal the fake-quantized ones.
  auto la = lm->linears(), lb = back->linears();
  for (size_t i = 0; i < la.size(); ++i) {
    auto* h = quant::nvfp4_hook(la[i]);
    auto w = h ? h->weight(la[i]->weight) : la[i]->weight;
    EXPECT_TRUE(same_bits(lb[i]->weight, w)) << la[i]->name();
  }
  // And the quantizer state of the import reproduces the stored scales: the amaxes, and the file's weight_scale kept
  // as static block scales (docs/quant.md, "Static block scales"), here the dynamic ones of the original weights.
  auto sa = quant::quantizer_state(lm), sb_all = quant::quantizer_state(back);
  decltype(sb_all) sb;
  int64_t block_scales = 0;
  for (const auto& [name, t] : sb_all) {
    if (!name.ends_with(".weight_quantizer._block_scale")) {
      sb.emplace_back(name, t);
      continue;
    }
    ++block_scales;
    for (const auto& l : la) {
      if (name != l->name() + ".weight_quantizer._block_scale") continue;
      auto* h = quant::nvfp4_hook(l);
      ASSERT_NE(h, nullptr) << name;
      EXPECT_TRUE(torch::equal(t, nvfp4::quantize(l->weight.detach(), h->weight_amax).block_scales)) << name;
    }
  }
  EXPECT_EQ(block_scales, static_cast<int64_t>(quant::quantized_modules(lm).size()));
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sb[i].first);
    EXPECT_EQ(sa[i].second.item<float>() / 2688.0f, sb[i].second.item<float>() / 2688.0f) << sa[i].first;
  }
  if (dir.filename() == "stories260K") {
    EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
    EXPECT_TRUE(fs::exists(out / "generation_config.json"));
    EXPECT_FALSE(fs::exists(out / "golden_logits.safetensors"));
  }
  ::qad::remove_tree(out);
}

INSTANTIATE_TEST_SUITE_P(Models, RoundTrip,
                         ::testing::Values(std::make_tuple(0, torch::kFloat32), std::make_tuple(1, torch::kFloat32),
                                           std::make_tuple(2, torch::kFloat32), std::make_tuple(3, torch::kFloat32),
                                           std::make_tuple(4, torch::kFloat32), std::make_tuple(0, torch::kBFloat16),
                                           std::make_tuple(4, torch::kBFloat16), std::make_tuple(5, torch::kFloat32),
                                           std::make_tuple(6, torch::kFloat32), std::make_tuple(6, torch::kBFloat16),
                                           std::make_tuple(7, torch::kFloat32), std::make_tuple(8, torch::kFloat32),
                                           std::make_tuple(8, torch::kBFloat16)));

// Weight-only NVFP4 (W4A16_NVFP4): the export has no input_scale and says so in both config files; the import
// leaves the inputs unquantized (bit-identical logits to the model it came from, which differ from the W4A4
// model's), and export -> import -> export writes the same bytes.
TEST(WeightOnly, ExportImportExportIsByteIdenticalWithUnquantizedInputs) {
  for (int index : {3, 5}) {  // a dense Qwen3 and a Qwen3-MoE fixture
    const auto dir = quant_model_dirs()[static_cast<size_t>(index)];
    quant::QuantConfig cfg;
    cfg.quantize_inputs = false;
    auto lm = quantized_fixture(dir, torch::kFloat32, cfg);
    auto w4a4 = quantized_fixture(dir, torch::kFloat32);
    auto ids = torch::randint(lm->config().vocab_size, {2, 17}, seeded_generator(19), torch::kLong);
    torch::NoGradGuard ng;
    auto want = lm->forward(ids).logits;
    EXPECT_FALSE(same_bits(want, w4a4->forward(ids).logits)) << "weight-only must differ from W4A4: " << dir;

    auto out = scratch("w4a16_" + dir.filename().string());
    quant::export_nvfp4(lm, out, dir);
    ASSERT_TRUE(quant::is_nvfp4_checkpoint(out));
    EXPECT_EQ(read_json(out / "hf_quant_config.json")["quantization"]["quant_algo"], "W4A16_NVFP4");
    const auto qc = read_json(out / "config.json")["quantization_config"];
    EXPECT_EQ(qc["quant_algo"], "W4A16_NVFP4");
    EXPECT_TRUE(qc["config_groups"]["group_0"]["input_activations"].is_null());
    int scales = 0;
    for (const auto& [name, t] : io::read_tensors(out)) {
      EXPECT_FALSE(name.ends_with(".input_scale")) << name;
      scales += name.ends_with(".weight_scale_2");
    }
    EXPECT_GT(scales, 0);

    auto back = quant::load_nvfp4(out, torch::kCPU, torch::kFloat32);
    EXPECT_EQ(quant::quantized_modules(back), quant::quantized_modules(lm));
    for (const auto& l : back->linears()) {
      if (auto* h = quant::nvfp4_hook(l)) {
        EXPECT_FALSE(h->quantize_inputs) << l->name();
      }
    }
    EXPECT_TRUE(same_bits(back->forward(ids).logits, want)) << dir;

    auto again = scratch("w4a16_again_" + dir.filename().string());
    quant::export_nvfp4(back, again, dir);
    for (const auto* f : {"model.safetensors", "config.json", "hf_quant_config.json"}) {
      EXPECT_EQ(read_file(out / f), read_file(again / f)) << f << " of " << dir;
    }
    ::qad::remove_tree(out);
    ::qad::remove_tree(again);
  }
}

// A model mixing W4A4 and weight-only layers is ModelOpt's MIXED_PRECISION (more in mixed_fp8_test.cc).
TEST(WeightOnly, AModelMixingW4A4AndWeightOnlyLayersIsMixedPrecision) {
  const auto dir = quant_model_dirs()[3];
  auto lm = quantized_fixture(dir);
  std::string first;
  for (const auto& l : lm->linears()) {
    if (auto* h = quant::nvfp4_hook(l); h != nullptr && quant::fused_group(l->name()).empty()) {
      h->quantize_inputs = false;  // the first quantized Linear outside a fused group only
      first = l->name();
      break;
    }
  }
  auto out = scratch("mixed");
  EXPECT_EQ(quant::export_nvfp4(lm, out, dir), quant::NvFp4Format::kMixed);
  const auto layers = read_json(out / "hf_quant_config.json")["quantization"]["quantized_layers"];
  EXPECT_EQ(layers.at(first)["quant_algo"], "W4A16_NVFP4");
  EXPECT_EQ(layers.size(), quant::quantized_modules(lm).size());
  ::qad::remove_tree(out);
  // Inside a fused group one format only: engines run q/k/v as one GEMM.
  quant::nvfp4_hook(lm->model->layer_list[0]->self_attn->q_proj)->quantize_inputs = false;
  expect_error_containing([&] { quant::export_nvfp4(lm, out, dir); },
                          {"model.layers.0.self_attn.qkv", "W4A16_NVFP4", "NVFP4", "one GEMM"});
  EXPECT_FALSE(fs::exists(out));
}

// Training moves the weights past the calibrated amax: the export still decodes to what the model computes.
TEST(Export, WeightsBeyondTheFixedAmax) {
  const auto dir = source_dir() / "tests/fixtures/models/llama3_rope_gqa_untied";
  auto lm = quantized_fixture(dir);
  {
    torch::NoGradGuard g;
    for (const auto& l : lm->linears()) l->weight.mul_(1.7).add_(0.01);
  }
  auto ids = torch::randint(256, {1, 20}, seeded_generator(3), torch::kLong);
  auto want = lm->forward(ids).logits;
  auto out = scratch("moved");
  quant::export_nvfp4(lm, out, dir);
  EXPECT_TRUE(same_bits(quant::load_nvfp4(out, torch::kCPU, torch::kFloat32)->forward(ids).logits, want));
  ::qad::remove_tree(out);
}

TEST(Export, FailedExportLeavesNothing) {
  const auto dir = source_dir() / "tests/fixtures/models/llama3_rope_gqa_untied";
  auto lm = quantized_fixture(dir);
  auto out = scratch("failed");
  {
    torch::NoGradGuard g;
    lm->linears()[3]->weight[0][0] = std::numeric_limits<float>::quiet_NaN();
  }
  expect_error_containing([&] { quant::export_nvfp4(lm, out, dir); }, {"model.layers.0.self_attn.o_proj.weight", "NaN"});
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(out.parent_path())) {
    EXPECT_EQ(e.path().filename().string().find(out.filename().string() + ".tmp"), std::string::npos) << e.path();
  }
  // Uncalibrated models and non-export targets are refused too.
  auto raw = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  expect_error_containing([&] { quant::export_nvfp4(raw, out, dir); }, {"no NVFP4-quantized Linear"});
  expect_error_containing([&] { quant::export_nvfp4(quantized_fixture(dir), dir.parent_path(), dir); },
                          {"not an NVFP4 export"});
}

// ---- import of bad checkpoints --------------------------------------------------------------------------------

// A checkpoint's tensors as raw bytes with their safetensors dtypes (FP8 stays F8_E4M3 on every LibTorch).
struct RawTensor {
  io::DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
using RawTensors = std::map<std::string, RawTensor>;

RawTensors read_raw(const fs::path& dir) {
  auto ckpt = io::Checkpoint::open(dir);
  RawTensors out;
  for (const auto& n : ckpt.names()) {
    const auto& e = ckpt.at(n);
    auto b = e.file->bytes(*e.info);
    RawTensor r{e.info->dtype, e.info->shape, std::vector<uint8_t>(b.size())};
    std::memcpy(r.bytes.data(), b.data(), b.size());
    out.emplace(n, std::move(r));
  }
  return out;
}

RawTensor raw(const torch::Tensor& t, std::optional<io::DType> dtype = {}) {
  auto c = t.contiguous();
  RawTensor r{dtype ? *dtype : io::from_scalar_type(c.scalar_type()),
              std::vector<int64_t>(c.sizes().begin(), c.sizes().end()), std::vector<uint8_t>(c.nbytes())};
  std::memcpy(r.bytes.data(), c.data_ptr(), c.nbytes());
  return r;
}

// Replaces the checkpoint files of `dir` by one model.safetensors holding `t`.
void write_raw(const fs::path& dir, const RawTensors& t) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto f = e.path().filename().string();
    if (f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json")) fs::remove(e.path());
  }
  std::vector<io::TensorRef> refs;
  for (const auto& [n, r] : t) {
    refs.push_back({n, r.dtype, r.shape, std::span<const std::byte>(reinterpret_cast<const std::byte*>(r.bytes.data()),
                                                                      r.bytes.size())});
  }
  io::write_safetensors(dir / "model.safetensors", refs);
}

class BadImport : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = source_dir() / "tests/fixtures/models/llama3_rope_gqa_untied";
    good_ = scratch("good");
    quant::export_nvfp4(quantized_fixture(src_), good_, src_);
  }
  void TearDown() override { ::qad::remove_tree(good_); }

  // A copy of the good export with its tensors edited.
  fs::path edited(const std::string& name, const std::function<void(RawTensors&)>& edit) {
    auto dir = scratch(name);
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(good_)) fs::copy_file(e.path(), dir / e.path().filename());
    auto t = read_raw(good_);
    edit(t);
    write_raw(dir, t);
    return dir;
  }

  fs::path src_, good_;
};

TEST_F(BadImport, NotNvfp4) {
  expect_error_containing([&] { quant::load_nvfp4(src_, torch::kCPU, torch::kFloat32); },
                          {src_.string(), "not an NVFP4 checkpoint"});
  expect_error_containing([&] { quant::load_nvfp4(src_ / "config.json", torch::kCPU, torch::kFloat32); },
                          {"not a directory"});
  auto dir = edited("fp8", [](RawTensors&) {});
  auto j = read_json(dir / "hf_quant_config.json");
  j["quantization"]["quant_algo"] = "FP8";
  write_file_atomic(dir / "hf_quant_config.json", j.dump());
  EXPECT_FALSE(quant::is_nvfp4_checkpoint(dir));
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); },
                          {"FP8", "qad reads NVFP4 and W4A16_NVFP4"});
  j["quantization"]["quant_algo"] = "NVFP4";
  j["quantization"]["group_size"] = 32;
  write_file_atomic(dir / "hf_quant_config.json", j.dump());
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); }, {"group_size must be 16"});
  ::qad::remove_tree(dir);
}

TEST_F(BadImport, InputScalesInAWeightOnlyCheckpoint) {
  // A W4A4 export relabelled W4A16_NVFP4: engines would ignore its input scales, so the import refuses to guess.
  auto dir = edited("w4a16_label", [](RawTensors&) {});
  auto j = read_json(dir / "hf_quant_config.json");
  j["quantization"]["quant_algo"] = "W4A16_NVFP4";
  write_file_atomic(dir / "hf_quant_config.json", j.dump());
  EXPECT_TRUE(quant::is_nvfp4_checkpoint(dir));
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); },
                          {".input_scale' in a W4A16_NVFP4 checkpoint"});
  ::qad::remove_tree(dir);
}

TEST_F(BadImport, MissingScales) {
  const std::string p = "model.layers.1.mlp.up_proj";
  auto dir = edited("noscale", [&](RawTensors& t) { t.erase(p + ".input_scale"); });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); }, {p + ".input_scale", "missing"});
  ::qad::remove_tree(dir);
  dir = edited("noblock", [&](RawTensors& t) { t.erase(p + ".weight_scale"); });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); }, {p, "weight_scale"});
  ::qad::remove_tree(dir);
}

TEST_F(BadImport, WrongShapesAndDtypes) {
  const std::string p = "model.layers.0.self_attn.q_proj";
  auto dir = edited("shape", [&](RawTensors& t) {
    t[p + ".weight_scale"] = raw(torch::zeros({64, 3}, torch::kUInt8), io::DType::F8_E4M3);
  });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); },
                          {p + ".weight_scale", "[64, 4]"});
  ::qad::remove_tree(dir);
  dir = edited("u8scale", [&](RawTensors& t) { t[p + ".weight_scale"].dtype = io::DType::U8; });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); },
                          {p + ".weight_scale", "F8_E4M3"});
  ::qad::remove_tree(dir);
  dir = edited("packed", [&](RawTensors& t) { t[p + ".weight"] = raw(torch::zeros({64, 64})); });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); }, {p + ".weight", "U8"});
  ::qad::remove_tree(dir);
  dir = edited("scale2", [&](RawTensors& t) { t[p + ".weight_scale_2"] = raw(torch::ones({2})); });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); }, {p + ".weight_scale_2", "scalar"});
  ::qad::remove_tree(dir);
  dir = edited("nan", [&](RawTensors& t) {
    t[p + ".input_scale"] = raw(torch::full({}, std::numeric_limits<float>::quiet_NaN()));
  });
  expect_error_containing([&] { quant::load_nvfp4(dir, torch::kCPU, torch::kFloat32); }, {p + ".input_scale"});
  ::qad::remove_tree(dir);
}

// K not divisible by 16 in an imported file: stories260K's down_proj (K = 172) presented as quantized.
TEST(BadImportStories, InputSizeNotMultipleOf16) {
  const auto src = shared_dir() / "models/stories260K";
  auto out = scratch("k172");
  quant::export_nvfp4(quantized_fixture(src), out, src);
  auto t = read_raw(out);
  const std::string p = "model.layers.2.mlp.down_proj";
  t[p + ".weight"] = raw(torch::zeros({64, 86}, torch::kUInt8));
  t[p + ".weight_scale"] = raw(torch::zeros({64, 11}, torch::kUInt8), io::DType::F8_E4M3);
  t[p + ".weight_scale_2"] = raw(torch::ones({}));
  t[p + ".input_scale"] = raw(torch::ones({}));
  write_raw(out, t);
  expect_error_containing([&] { quant::load_nvfp4(out, torch::kCPU, torch::kFloat32); },
                          {p + ".weight", "172", "not a multiple of 16"});
  ::qad::remove_tree(out);
}

}  // namespace
}  // namespace qad::testing
