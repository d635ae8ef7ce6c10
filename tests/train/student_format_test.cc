// A --student NVFP4 checkpoint against quant.options.quantize_inputs (train/student.cc): a weight-only
// (W4A16_NVFP4) checkpoint is refused unless the run is weight-only too, so that run.json never says W4A4 for a
// weight-only student; a W4A4 checkpoint trained weight-only loses its input quantization, as asked. Likewise the
// FP8 KV cache (quant.options.kv_cache): a checkpoint without k_scale / v_scale cannot train one, and one with them
// trained with kv_cache none drops them; the export label says which.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "common/test_util.h"
#include "io/safetensors_torch.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "train/student.h"
#include "util/error.h"
#include "util/remove_tree.h"

namespace qad::train {
namespace {
namespace fs = std::filesystem;

fs::path export_stories(bool weight_only, const std::string& name, bool fp8_kv = false, bool static_mse = false) {
  const auto dir = qad::testing::shared_dir() / "models/stories260K";
  auto lm = model::CausalLM::load(dir, torch::kCPU, torch::kFloat32);
  quant::QuantConfig q;
  q.quantize_inputs = !weight_only;
  q.calib_samples = 2;
  if (fp8_kv) q.kv_cache = quant::KvCacheQuant::kFp8;
  if (static_mse) q.block_scales = quant::BlockScales::kStaticMse;
  quant::apply_nvfp4(lm, q);
  auto ids = torch::randint(lm->config().vocab_size, {2, 16}, qad::testing::seeded_generator(5), torch::kLong);
  quant::calibrate(lm, [&](const quant::BatchSink& sink) { sink(ids, torch::Tensor()); }, q);
  const auto out = fs::temp_directory_path() / fmt::format("qad_student_format_{}_{}", ::getpid(), name);
  qad::remove_tree(out);
  quant::export_nvfp4(lm, out, dir);
  return out;
}

size_t hooks_quantizing_inputs(const model::CausalLM& lm) {
  size_t n = 0;
  for (const auto& l : lm->linears()) {
    if (auto* h = quant::nvfp4_hook(l); h != nullptr && h->quantize_inputs) ++n;
  }
  return n;
}

TEST(StudentFormat, WeightOnlyCheckpointNeedsAWeightOnlyRunAndW4A4DropsItsInputScalesWhenAsked) {
  TrainConfig cfg;
  cfg.method = Method::kQad;
  cfg.run.teacher = (qad::testing::shared_dir() / "models/stories260K").string();
  const CalibSource no_calibration = [](const CalibSink&) { FAIL() << "a --student checkpoint is not recalibrated"; };

  const auto w4a16 = export_stories(true, "w4a16");
  cfg.quant.student = w4a16.string();
  try {
    build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is weight-only (W4A16_NVFP4: no input scales); add --weight-only"),
              std::string::npos) << e.what();
  }
  cfg.quant.options.quantize_inputs = false;
  auto s = build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true);
  EXPECT_FALSE(s.quantized_modules.empty());
  EXPECT_EQ(hooks_quantizing_inputs(s.lm), 0u);

  const auto w4a4 = export_stories(false, "w4a4");
  cfg.quant.student = w4a4.string();
  cfg.quant.options.quantize_inputs = true;
  EXPECT_GT(hooks_quantizing_inputs(build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true).lm), 0u);
  cfg.quant.options.quantize_inputs = false;
  EXPECT_EQ(hooks_quantizing_inputs(build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true).lm), 0u);
  qad::remove_tree(w4a16);
  qad::remove_tree(w4a4);
}

TEST(StudentFormat, Fp8KvCheckpointKeepsItsKvCacheOnlyWhenTheRunAsksForIt) {
  TrainConfig cfg;
  cfg.method = Method::kQad;
  cfg.run.teacher = (qad::testing::shared_dir() / "models/stories260K").string();
  const CalibSource no_calibration = [](const CalibSink&) { FAIL() << "a --student checkpoint is not recalibrated"; };

  const auto kv = export_stories(false, "kvfp8", true);
  cfg.quant.student = kv.string();
  cfg.quant.options.kv_cache = quant::KvCacheQuant::kFp8;
  auto s = build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true);
  EXPECT_TRUE(quant::has_fp8_kv_cache(s.lm));
  EXPECT_EQ(export_format_label(s), "NVFP4 + FP8 KV");
  cfg.quant.options.kv_cache = quant::KvCacheQuant::kNone;
  s = build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true);
  EXPECT_FALSE(quant::has_fp8_kv_cache(s.lm));
  EXPECT_EQ(export_format_label(s), "NVFP4");

  const auto plain = export_stories(false, "nokv");
  cfg.quant.student = plain.string();
  cfg.quant.options.kv_cache = quant::KvCacheQuant::kFp8;
  try {
    build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no FP8 KV-cache scales"), std::string::npos) << e.what();
  }
  qad::remove_tree(kv);
  qad::remove_tree(plain);
}

// Static block scales (quant.options.block_scales): a --student export's weight_scale trains frozen with
// static_mse (the file's codes, not searched again); with dynamic block scales they follow the live weights.
TEST(StudentFormat, BlockScalesOfAnExportStayFrozenOnlyWithStaticMse) {
  TrainConfig cfg;
  cfg.method = Method::kQad;
  cfg.run.teacher = (qad::testing::shared_dir() / "models/stories260K").string();
  const CalibSource no_calibration = [](const CalibSink&) { FAIL() << "a --student checkpoint is not recalibrated"; };
  const auto dir = export_stories(false, "static", false, true);
  cfg.quant.student = dir.string();
  cfg.quant.options.block_scales = quant::BlockScales::kStaticMse;
  auto s = build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true);
  const auto file = io::read_tensors(dir);
  int64_t checked = 0;
  for (const auto& l : s.lm->linears()) {
    auto* h = quant::nvfp4_hook(l);
    if (h == nullptr) continue;
    ASSERT_TRUE(h->static_block_scales && h->block_scale.defined()) << l->name();
    for (const auto& [name, t] : file) {
      if (name != l->name() + ".weight_scale") continue;
      EXPECT_TRUE(torch::equal(h->block_scale, t.view(torch::kUInt8))) << name;
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int64_t>(s.quantized_modules.size()));
  cfg.quant.options.block_scales = quant::BlockScales::kDynamic;
  s = build_student(cfg, torch::kCPU, torch::kFloat32, no_calibration, true);
  EXPECT_FALSE(quant::has_static_block_scales(s.lm));
  qad::remove_tree(dir);
}

}  // namespace
}  // namespace qad::train
