// The CKA kernels (loss/cka_kernels_cuda.cu) against their plain references on fresh random inputs with poisoned
// (NaN) outputs: the vector path (widths that are multiples of the 16-byte vector, including a partial last
// tile) and the scalar path (odd widths), one row, FP32 / BF16 / FP16 inputs; then the batched CKA on CUDA, which
// now runs them, against FP64 on the CPU in both the Gram and the feature form, value and gradient.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/test_util.h"
#include "loss/cka.h"
#include "loss/cka_kernels.h"

namespace qad::loss {
namespace {

TEST(CkaKernelsCuda, CentreColumnsEqualsReferenceWithPoisonedOutputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(63);
  for (const auto& shape : {std::vector<int64_t>{3, 1024, 2048}, {2, 37, 72}, {2, 41, 13}, {1, 1, 24}, {5, 300, 1000}}) {
    for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      auto x = (torch::randn(shape, gen) * 3 + 20.0).to(dtype);
      kernels::CentreColumns out[2];
      for (int k = 0; k < 2; ++k) {
        const auto dev = k == 0 ? torch::Device(torch::kCPU) : torch::Device(torch::kCUDA);
        auto& a = out[k];
        a.x = x.to(dev);
        a.centred = torch::full(shape, NAN, torch::TensorOptions().device(dev));
        a.mean = torch::full({shape[0], 1, shape[2]}, NAN, torch::TensorOptions().device(dev));
        if (k == 0) {
          kernels::centre_columns_reference(a);
        } else {
          kernels::centre_columns(a);
        }
      }
      const std::string what = std::string(c10::toString(dtype)) + " " + std::to_string(shape[1]) + "x" +
                               std::to_string(shape[2]);
      auto mean = out[1].mean.cpu(), centred = out[1].centred.cpu();
      ASSERT_TRUE(torch::isfinite(mean).all().item<bool>()) << what;
      ASSERT_TRUE(torch::isfinite(centred).all().item<bool>()) << what;
      // FP32 sums of up to 1024 values near 20 in 32 row groups: the bound of that order's rounding error on a
      // mean near 20 is ~4e-5 (the reference sums in double).
      EXPECT_LE((mean - out[0].mean).abs().max().item<double>(), 1e-4) << what;
      // The centred rows are x minus the kernel's own mean, exactly (one FP32 subtraction).
      EXPECT_TRUE(torch::equal(centred, x.to(torch::kFloat32) - mean)) << what;
    }
  }
}

TEST(CkaKernelsCuda, CentreColumnsIntoBf16RoundsTheFp32DifferenceOnce) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(66);
  for (const auto& shape : {std::vector<int64_t>{3, 1024, 2048}, {2, 37, 72}, {2, 41, 13}}) {
    for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      auto x = (torch::randn(shape, gen) * 3 + 20.0).to(dtype);
      kernels::CentreColumns a{x.cuda(), torch::full(shape, NAN, torch::dtype(torch::kBFloat16).device(torch::kCUDA)),
                               torch::full({shape[0], 1, shape[2]}, NAN, torch::device(torch::kCUDA))};
      kernels::centre_columns(a);
      auto mean = a.mean.cpu();
      ASSERT_TRUE(torch::isfinite(a.centred.cpu().to(torch::kFloat32)).all().item<bool>());
      EXPECT_TRUE(torch::equal(a.centred.cpu(), (x.to(torch::kFloat32) - mean).to(torch::kBFloat16)))
          << c10::toString(dtype) << " " << shape[2];
    }
  }
}

TEST(CkaKernelsCuda, PairSumsEqualReferenceWithPoisonedOutputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(64);
  for (const auto& shape : {std::vector<int64_t>{28, 1024, 1024}, {3, 7, 9}, {2, 1, 4}, {1, 333, 12}}) {
    auto a = torch::randn(shape, gen) * 2, b = torch::randn(shape, gen) + a;
    kernels::PairSums ref{a, b, torch::full({shape[0], 3}, NAN, torch::kFloat64)};
    kernels::pair_sums_reference(ref);
    kernels::PairSums gpu{a.cuda(), b.cuda(), torch::full({shape[0], 3}, NAN, torch::dtype(torch::kFloat64).device(torch::kCUDA))};
    kernels::pair_sums(gpu);
    auto got = gpu.out.cpu();
    ASSERT_TRUE(torch::isfinite(got).all().item<bool>()) << shape[1] << "x" << shape[2];
    // The same float products summed in double in another order.
    EXPECT_TRUE(torch::allclose(got, ref.out, 1e-11, 1e-9)) << shape[1] << "x" << shape[2];
  }
  // Deterministic: the same inputs give the same bits.
  auto a = torch::randn({4, 512, 512}, gen).cuda(), b = torch::randn({4, 512, 512}, gen).cuda();
  kernels::PairSums s1{a, b, torch::empty({4, 3}, torch::dtype(torch::kFloat64).device(torch::kCUDA))};
  kernels::PairSums s2{a, b, torch::empty({4, 3}, torch::dtype(torch::kFloat64).device(torch::kCUDA))};
  kernels::pair_sums(s1);
  kernels::pair_sums(s2);
  EXPECT_TRUE(torch::equal(s1.out, s2.out));
}

TEST(CkaKernelsCuda, BatchedCkaOnCudaMatchesFp64OnTheCpu) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(65);
  // n = 96 tokens of 512 features takes the Gram form, n = 600 of 64 the feature form.
  for (const auto& shape : {std::vector<int64_t>{3, 96, 512}, {3, 600, 64}}) {
    auto t = (torch::randn(shape, gen) + 4.0).to(torch::kBFloat16);
    auto s = (t.to(torch::kFloat32) + 0.3 * torch::randn(shape, gen)).to(torch::kBFloat16);
    for (auto est : {CkaEstimator::kBiased, CkaEstimator::kDebiased}) {
      auto y_gpu = s.cuda().requires_grad_(true);
      auto y_cpu = s.to(torch::kFloat64).requires_grad_(true);
      auto c_gpu = linear_cka_batched(t.cuda(), y_gpu, est);
      auto c_cpu = linear_cka_batched(t.to(torch::kFloat64), y_cpu, est);
      EXPECT_TRUE(torch::allclose(c_gpu.cpu().to(torch::kFloat64), c_cpu, 0, 2e-5)) << shape[1];
      c_gpu.sum().backward();
      c_cpu.sum().backward();
      const double scale = y_cpu.grad().abs().max().item<double>();
      EXPECT_LE((y_gpu.grad().cpu().to(torch::kFloat64) - y_cpu.grad()).abs().max().item<double>(), 2e-2 * scale)
          << shape[1];
      // BF16 products with FP32 accumulation (the Gram form of the biased estimator takes them): CKA within
      // 5e-5 of FP64 (the features' BF16 rounding lowers it by ~1e-6; the rest is accumulation order), and the
      // gradient within the same bound as above.
      auto y_bf = s.cuda().requires_grad_(true);
      auto c_bf = linear_cka_batched(t.cuda(), y_bf, est, /*bf16_products=*/true);
      EXPECT_EQ(c_bf.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::allclose(c_bf.cpu().to(torch::kFloat64), c_cpu, 0, 5e-5)) << shape[1];
      c_bf.sum().backward();
      EXPECT_LE((y_bf.grad().cpu().to(torch::kFloat64) - y_cpu.grad()).abs().max().item<double>(), 2e-2 * scale)
          << shape[1];
    }
  }
}

}  // namespace
}  // namespace qad::loss
