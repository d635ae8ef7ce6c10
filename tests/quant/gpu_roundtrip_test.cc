// GPU: calibration, fake quantization, export and import on CUDA in BF16 (the training setting) give logits
// bit-identical between the fake-quantized model and its imported export, and the export's bytes equal the
// CPU export's (the CUDA and CPU NVFP4 kernels agree bit for bit); also with static MSE block scales and FP8 layers.
#include <gtest/gtest.h>

#include <unistd.h>

#include <map>

#include "util/remove_tree.h"
#include "io/safetensors.h"
#include "quant/quantize_model.h"
#include "quant_test_util.h"

namespace qad::testing {
namespace {
namespace fs = std::filesystem;

std::map<std::string, std::vector<std::byte>> file_bytes(const fs::path& dir) {
  auto ckpt = io::Checkpoint::open(dir);
  std::map<std::string, std::vector<std::byte>> out;
  for (const auto& n : ckpt.names()) {
    auto b = ckpt.at(n).file->bytes(*ckpt.at(n).info);
    out[n] = std::vector<std::byte>(b.begin(), b.end());
  }
  return out;
}

void round_trip_matches_cpu(const quant::QuantConfig& cfg) {
  for (const auto& dir : quant_model_dirs()) {
    const torch::Device cuda(torch::kCUDA);
    auto on = [&](torch::Device d) {
      auto lm = model::CausalLM::load(dir, d, torch::kBFloat16);
      quant::apply_nvfp4(lm, cfg);
      quant::calibrate(lm, random_batches(lm->config().vocab_size, 4, 2, 24, 7), cfg);
      return lm;
    };
    auto gpu = on(cuda), cpu = on(torch::kCPU);
    auto ids = torch::randint(gpu->config().vocab_size, {2, 40}, seeded_generator(4), torch::kLong);
    auto want = gpu->forward(ids.to(cuda)).logits;
    const auto base = fs::temp_directory_path() / fmt::format("qad_quant_gpu_{}", ::getpid());
    quant::export_nvfp4(gpu, base / "gpu", dir);
    quant::export_nvfp4(cpu, base / "cpu", dir);
    auto back = quant::load_nvfp4(base / "gpu", cuda, torch::kBFloat16);
    EXPECT_TRUE(same_bits(back->forward(ids.to(cuda)).logits, want)) << dir;
    // Calibration sums activations in a different order on the GPU, so input_scale may differ in the last bits;
    // the weights and their scales may not.
    auto g = file_bytes(base / "gpu"), c = file_bytes(base / "cpu");
    ASSERT_EQ(g.size(), c.size());
    for (const auto& [n, b] : g) {
      if (n.ends_with(".input_scale")) continue;
      EXPECT_TRUE(b == c.at(n)) << dir << ": " << n;
    }
    ::qad::remove_tree(base);
  }
}

TEST(QuantGpu, RoundTripBf16MatchesCpu) {
  QAD_REQUIRE_GPU();
  round_trip_matches_cpu({});
}

// Static MSE block scales (the search is tensor ops in a fixed order: CUDA must choose the CPU's codes) and FP8
// layers (MIXED_PRECISION) on CUDA: the same weight bytes and scales as on the CPU, bit-identical imported logits.
TEST(QuantGpu, StaticBlockScalesAndFp8LayersMatchCpu) {
  QAD_REQUIRE_GPU();
  quant::QuantConfig cfg;
  cfg.block_scales = quant::BlockScales::kStaticMse;
  cfg.fp8_layers = {"*.mlp.down_proj"};
  round_trip_matches_cpu(cfg);
}

}  // namespace
}  // namespace qad::testing
