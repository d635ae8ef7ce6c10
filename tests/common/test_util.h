// Shared test helpers: seeded randomness (seed printed, overridable with QAD_TEST_SEED), paths to the
// repo and ../shared, poisoned output buffers, and bitwise tensor comparison.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

namespace qad::testing {

inline uint64_t test_seed(uint64_t fallback = 20261123) {
  if (const char* s = std::getenv("QAD_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return fallback;
}

// A seeded CPU generator; the seed goes into the failure message of the calling test.
inline torch::Generator seeded_generator(uint64_t salt = 0) {
  const uint64_t seed = test_seed() + salt;
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return torch::make_generator<at::CPUGeneratorImpl>(seed);
}

inline std::filesystem::path source_dir() { return QAD_SOURCE_DIR; }
inline std::filesystem::path shared_dir() {
  if (const char* s = std::getenv("QAD_SHARED_DIR")) return s;
  return source_dir().parent_path() / "shared";
}

inline bool has_gpu() { return torch::cuda::is_available(); }

// Skips the current test with a reason where no CUDA device or no CUDA build is present.
#define QAD_REQUIRE_GPU()                                                              \
  do {                                                                                 \
    if (!::qad::testing::gpu_build()) GTEST_SKIP() << "this build has no CUDA kernels"; \
    if (!::qad::testing::has_gpu()) GTEST_SKIP() << "no CUDA device visible";          \
  } while (0)

inline bool gpu_build() {
#ifdef QAD_HAS_CUDA
  return true;
#else
  return false;
#endif
}

// What fn throws (std::exception's what()), or "(nothing thrown)": for asserting that an error names what it should.
inline std::string thrown_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

// Fills a tensor with a NaN pattern (floats) or 0xA5 bytes (integers) so unwritten outputs show.
inline void poison(torch::Tensor& t) {
  if (t.is_floating_point()) {
    t.fill_(std::numeric_limits<float>::quiet_NaN());
  } else {
    t.fill_(0xA5);
  }
}

// Bitwise equality of two tensors (any dtype); NaN equals NaN of any payload.
inline ::testing::AssertionResult same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure() << "shape/dtype differ: " << a.sizes() << " " << a.scalar_type() << " vs "
                                         << b.sizes() << " " << b.scalar_type();
  }
  auto ac = a.cpu().contiguous(), bc = b.cpu().contiguous();
  torch::Tensor differ;
  if (ac.is_floating_point()) {
    auto af = ac.to(torch::kFloat64), bf = bc.to(torch::kFloat64);
    auto nan_both = torch::isnan(af).logical_and(torch::isnan(bf));
    auto eq = (af == bf).logical_and(torch::signbit(af) == torch::signbit(bf));
    differ = eq.logical_or(nan_both).logical_not();
  } else {
    differ = ac != bc;
  }
  const int64_t n = differ.sum().item<int64_t>();
  if (n == 0) return ::testing::AssertionSuccess();
  auto idx = differ.reshape({-1}).nonzero().flatten();
  const int64_t i = idx[0].item<int64_t>();
  return ::testing::AssertionFailure() << n << " of " << a.numel() << " elements differ; first at flat index " << i
                                       << ": " << ac.reshape({-1})[i].item<double>() << " vs "
                                       << bc.reshape({-1})[i].item<double>();
}

}  // namespace qad::testing
