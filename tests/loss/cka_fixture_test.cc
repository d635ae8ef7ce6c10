// CKA on recorded activations against values computed independently by tools/cka_reference.py (numpy, FP64).
// Fixture format (docs/losses.md): tests/fixtures/cka/activations.json + activations.bin (raw little-endian
// rows), expected.json. Skips when the fixture has not been generated yet.
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "loss/cka_accumulator.h"

namespace {
using namespace qad::loss;
namespace fs = std::filesystem;

struct Layer {
  std::string name;
  torch::Tensor x, y;  // FP64 [rows, cols]
};

std::vector<Layer> read_activations(const fs::path& dir, int64_t& minibatch) {
  std::ifstream meta_in(dir / "activations.json");
  auto meta = nlohmann::json::parse(meta_in);
  EXPECT_EQ(meta.at("format").get<std::string>(), "qad-cka-activations-v1");
  const std::string dtype = meta.at("dtype");
  const auto st = dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  const int64_t elem = dtype == "float64" ? 8 : 4;
  static_assert(std::endian::native == std::endian::little, "the fixture is little-endian");
  minibatch = meta.at("minibatch_rows").get<int64_t>();
  std::ifstream bin(dir / meta.at("data").get<std::string>(), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(bin)), std::istreambuf_iterator<char>());
  std::vector<Layer> layers;
  for (const auto& l : meta.at("layers")) {
    const int64_t rows = l.at("rows"), xc = l.at("x_cols"), yc = l.at("y_cols");
    const int64_t xo = l.at("x_offset"), yo = l.at("y_offset");
    if (xo + rows * xc * elem > static_cast<int64_t>(bytes.size()) ||
        yo + rows * yc * elem > static_cast<int64_t>(bytes.size())) {
      ADD_FAILURE() << "layer " << l.at("name") << " lies outside activations.bin";
      return {};
    }
    auto view = [&](int64_t off, int64_t cols) {
      auto t = torch::empty({rows, cols}, st);
      std::memcpy(t.data_ptr(), bytes.data() + off, rows * cols * elem);
      return t.to(torch::kFloat64);
    };
    layers.push_back({l.at("name"), view(xo, xc), view(yo, yc)});
  }
  return layers;
}

TEST(CkaFixture, MatchesNumpyReference) {
  const fs::path dir = qad::testing::source_dir() / "tests/fixtures/cka";
  if (!fs::exists(dir / "expected.json") || !fs::exists(dir / "activations.json")) {
    GTEST_SKIP() << "no fixture at " << dir << ": generate it with tools/cka_reference.py (docs/losses.md)";
  }
  int64_t minibatch = 0;
  auto layers = read_activations(dir, minibatch);
  std::ifstream exp_in(dir / "expected.json");
  auto expected = nlohmann::json::parse(exp_in).at("layers");
  ASSERT_EQ(expected.size(), layers.size());
  ASSERT_FALSE(layers.empty());
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    const auto& e = expected[i];
    ASSERT_EQ(e.at("name").get<std::string>(), l.name);
    // FP64 here against FP64 numpy: agreement far below the 1e-5 acceptance bound.
    EXPECT_NEAR(linear_cka(l.x, l.y, CkaEstimator::kBiased).item<double>(), e.at("biased").get<double>(), 1e-9) << l.name;
    EXPECT_NEAR(linear_cka(l.x, l.y, CkaEstimator::kDebiased).item<double>(), e.at("debiased").get<double>(), 1e-9)
        << l.name;
    // The training path's FP32 accumulation against the same reference: the 1e-5 acceptance bound.
    auto x32 = l.x.to(torch::kFloat32), y32 = l.y.to(torch::kFloat32);
    EXPECT_NEAR(linear_cka(x32, y32, CkaEstimator::kBiased).item<double>(), e.at("biased").get<double>(), 1e-5) << l.name;
    EXPECT_NEAR(linear_cka(x32, y32, CkaEstimator::kDebiased).item<double>(), e.at("debiased").get<double>(), 1e-5)
        << l.name;
    CkaAccumulator acc;
    for (int64_t b = 0; b < l.x.size(0); b += minibatch) {
      const int64_t len = std::min(minibatch, l.x.size(0) - b);
      acc.add(l.name, l.x.narrow(0, b, len), l.y.narrow(0, b, len), {});
    }
    auto r = acc.result().at(0);
    EXPECT_NEAR(r.full_biased, e.at("biased").get<double>(), 1e-9) << l.name;
    EXPECT_NEAR(r.full_debiased, e.at("debiased").get<double>(), 1e-9) << l.name;
    EXPECT_NEAR(r.minibatch_biased, e.at("minibatch_biased").get<double>(), 1e-9) << l.name;
    EXPECT_NEAR(r.minibatch_debiased, e.at("minibatch_debiased").get<double>(), 1e-9) << l.name;
  }
}

}  // namespace
