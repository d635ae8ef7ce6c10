// NVFP4 on Qwen3-MoE: which modules the default config quantizes (every expert projection, never a router),
// and how calibration reaches every expert under both rules of quant.moe_calibration.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "model/moe_block.h"
#include "nvfp4/quantize.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"
#include "util/error.h"
#include "util/remove_tree.h"

namespace qad::testing {
namespace {

std::filesystem::path moe_fixture() { return source_dir() / "tests/fixtures/models/qwen3_moe_sparse_step"; }

TEST(MoeQuant, DefaultsQuantizeEveryExpertAndNoRouter) {
  auto lm = model::CausalLM::load(moe_fixture(), torch::kCPU, torch::kFloat32);
  auto names = quant::apply_nvfp4(lm, {});
  std::set<std::string> q(names.begin(), names.end());
  for (const auto& layer : lm->model->layer_list) {
    if (!layer->moe) continue;
    EXPECT_FALSE(q.count(layer->moe->gate->name())) << layer->moe->gate->name();
    for (const auto& e : layer->moe->expert_list) {
      for (const auto& l : {e->gate_proj, e->up_proj, e->down_proj}) EXPECT_TRUE(q.count(l->name())) << l->name();
      EXPECT_EQ(quant::fused_group(e->gate_proj->name()), quant::fused_group(e->up_proj->name()));
      EXPECT_TRUE(quant::fused_group(e->down_proj->name()).empty());
    }
  }
  auto un = quant::unquantized_modules(lm);
  EXPECT_NE(std::find(un.begin(), un.end(), "model.layers.1.mlp.gate"), un.end());
  EXPECT_NE(std::find(un.begin(), un.end(), "model.layers.3.mlp.gate"), un.end());
}

// One calibration token per batch row reaches only top_k of the 8 experts per layer.
quant::BatchSource one_token(int64_t id) {
  return [=](const quant::BatchSink& sink) { sink(torch::full({1, 1}, id, torch::kLong), {}); };
}

TEST(MoeQuant, RoutedCalibrationFillsUnreachedExpertsWithTheLayerMaxAndReportsThem) {
  auto lm = model::CausalLM::load(moe_fixture(), torch::kCPU, torch::kFloat32);
  quant::QuantConfig cfg;
  cfg.moe_calibration = quant::MoeCalibration::kRouted;
  quant::apply_nvfp4(lm, cfg);
  quant::CalibrationReport report;
  quant::calibrate(lm, one_token(5), cfg, &report);
  const auto& m = *lm->config().moe;
  // Two sparse layers x (8 - 2) experts x 3 projections had no token.
  EXPECT_EQ(report.experts_without_tokens.size(), static_cast<size_t>(2 * (m.num_experts - m.top_k) * 3));
  ASSERT_EQ(report.fallback_notes.size(), report.experts_without_tokens.size());
  EXPECT_NE(report.fallback_notes[0].find("(max over 2 other experts)"), std::string::npos) << report.fallback_notes[0];
  for (const auto& layer : lm->model->layer_list) {
    if (!layer->moe) continue;
    // Per projection: the unreached experts hold exactly the max over the reached ones.
    for (int proj = 0; proj < 3; ++proj) {
      float reached_max = 0;
      std::vector<float> unreached;
      for (const auto& e : layer->moe->expert_list) {
        const model::Linear l = proj == 0 ? e->gate_proj : proj == 1 ? e->up_proj : e->down_proj;
        const auto* h = quant::nvfp4_hook(l);
        const float a = h->input_amax.item<float>();
        const bool was_unreached = std::count(report.experts_without_tokens.begin(),
                                              report.experts_without_tokens.end(), l->name()) > 0;
        if (was_unreached) {
          unreached.push_back(a);
        } else {
          reached_max = std::max(reached_max, a);
        }
      }
      ASSERT_EQ(unreached.size(), static_cast<size_t>(m.num_experts - m.top_k));
      for (float a : unreached) EXPECT_EQ(a, reached_max);
    }
  }
}

TEST(MoeQuant, AllExpertsCalibrationGivesEveryExpertItsOwnAmaxFromEveryToken) {
  auto lm = model::CausalLM::load(moe_fixture(), torch::kCPU, torch::kFloat32);
  quant::QuantConfig cfg;  // default: all_experts, as ModelOpt
  ASSERT_EQ(cfg.moe_calibration, quant::MoeCalibration::kAllExperts);
  quant::apply_nvfp4(lm, cfg);
  quant::CalibrationReport report;
  quant::calibrate(lm, one_token(5), cfg, &report);
  EXPECT_TRUE(report.experts_without_tokens.empty());
  // The calibrated amaxes against this test's own forward: the single token's post-attention-norm input,
  // and per expert silu(gate x) * up x.
  for (const auto& layer : lm->model->layer_list) {
    if (!layer->moe) continue;
    std::set<float> gate_amax, down_amax;
    for (const auto& e : layer->moe->expert_list) {
      gate_amax.insert(quant::nvfp4_hook(e->gate_proj)->input_amax.item<float>());
      down_amax.insert(quant::nvfp4_hook(e->down_proj)->input_amax.item<float>());
      EXPECT_EQ(quant::nvfp4_hook(e->gate_proj)->input_amax.item<float>(),
                quant::nvfp4_hook(e->up_proj)->input_amax.item<float>());
    }
    EXPECT_EQ(gate_amax.size(), 1u) << "every expert sees the same (every) token at gate/up";
    EXPECT_EQ(down_amax.size(), static_cast<size_t>(lm->config().moe->num_experts)) << "each expert's own down input";
  }
  // Calibrated this way the model exports and the routers stay excluded.
  auto out = std::filesystem::temp_directory_path() / fmt::format("qad_moe_allexp_{}", ::getpid());
  qad::remove_tree(out);
  quant::export_nvfp4(lm, out, moe_fixture());
  auto back = quant::load_nvfp4(out, torch::kCPU, torch::kFloat32);
  auto ids = torch::randint(256, {2, 9}, seeded_generator(3), torch::kLong);
  torch::NoGradGuard g;
  EXPECT_TRUE(same_bits(back->forward(ids).logits, lm->forward(ids).logits));
  qad::remove_tree(out);
}

TEST(MoeQuant, ConfigKeySelectsTheRule) {
  auto c = quant::quant_config_from_json({{"moe_calibration", "routed"}});
  EXPECT_EQ(c.moe_calibration, quant::MoeCalibration::kRouted);
  EXPECT_EQ(quant::quant_config_from_json(nullptr).moe_calibration, quant::MoeCalibration::kAllExperts);
  try {
    quant::quant_config_from_json({{"moe_calibration", "some"}});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("quant.moe_calibration"), std::string::npos) << what;
    EXPECT_NE(what.find("'some' is not one of all_experts, routed"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace qad::testing
