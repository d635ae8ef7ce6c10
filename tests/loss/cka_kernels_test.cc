// The plain references of the CKA passes (loss/cka_kernels.h) against closed forms in double on the CPU: column
// means and centred rows of every layer, and the three FP64 dot products of two batches. The CUDA kernels are
// compared with these references in cka_kernels_cuda_test.cc.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/test_util.h"
#include "loss/cka_kernels.h"
#include "util/error.h"

namespace qad::loss {
namespace {

TEST(CkaKernelsReference, CentreColumnsIsTheColumnMeanAndTheDifference) {
  auto gen = qad::testing::seeded_generator(61);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    // An offset much larger than the spread, as residual streams have: the mean must not lose the small part.
    auto x = (torch::randn({3, 37, 20}, gen) + 50.0).to(dtype);
    kernels::CentreColumns a{x, torch::full({3, 37, 20}, NAN), torch::full({3, 1, 20}, NAN)};
    kernels::centre_columns(a);
    auto xd = x.to(torch::kFloat64);
    auto mean = xd.mean(1, true);
    // The mean is the double mean rounded to float (half an ulp of 50 is 1.9e-6); the centred rows are one FP32
    // subtraction from it.
    EXPECT_LE((a.mean.to(torch::kFloat64) - mean).abs().max().item<double>(), 4e-6) << c10::toString(dtype);
    auto expect = (x.to(torch::kFloat32) - a.mean);
    EXPECT_TRUE(torch::equal(a.centred, expect)) << c10::toString(dtype);
    EXPECT_LE((a.centred.to(torch::kFloat64) - (xd - mean)).abs().max().item<double>(), 4e-6) << c10::toString(dtype);
    EXPECT_LE(a.centred.to(torch::kFloat64).sum(1).abs().max().item<double>(), 1e-4) << c10::toString(dtype);
  }
}

TEST(CkaKernelsReference, CentreColumnsIntoBf16RoundsOnce) {
  auto gen = qad::testing::seeded_generator(67);
  auto x = (torch::randn({2, 19, 16}, gen) + 7.0).to(torch::kBFloat16);
  kernels::CentreColumns a{x, torch::full({2, 19, 16}, NAN).to(torch::kBFloat16), torch::full({2, 1, 16}, NAN)};
  kernels::centre_columns(a);
  EXPECT_TRUE(torch::equal(a.centred, (x.to(torch::kFloat32) - a.mean).to(torch::kBFloat16)));
}

TEST(CkaKernelsReference, PairSumsAreTheThreeDotProductsPerLayer) {
  auto gen = qad::testing::seeded_generator(62);
  auto a = torch::randn({4, 33, 17}, gen), b = torch::randn({4, 33, 17}, gen);
  kernels::PairSums s{a, b, torch::full({4, 3}, NAN, torch::kFloat64)};
  kernels::pair_sums(s);
  auto ad = a.to(torch::kFloat64), bd = b.to(torch::kFloat64);
  // Products rounded to float as the tensor ops form them, summed in double.
  auto ab = (a * b).to(torch::kFloat64).sum({1, 2}), aa = (a * a).to(torch::kFloat64).sum({1, 2}),
       bb = (b * b).to(torch::kFloat64).sum({1, 2});
  auto expect = torch::stack({ab, aa, bb}, 1);
  EXPECT_TRUE(torch::allclose(s.out, expect, 1e-12, 1e-12));
  // And close to the exact products.
  EXPECT_TRUE(torch::allclose(s.out.select(1, 0), (ad * bd).sum({1, 2}), 1e-6, 1e-6));
}

TEST(CkaKernelsReference, RejectsWrongShapesAndTypes) {
  auto x = torch::randn({2, 5, 8});
  kernels::CentreColumns bad_mean{x, torch::empty({2, 5, 8}), torch::empty({2, 5, 8})};
  EXPECT_THROW(kernels::centre_columns(bad_mean), qad::Error);
  kernels::CentreColumns bad_type{x.to(torch::kFloat64), torch::empty({2, 5, 8}), torch::empty({2, 1, 8})};
  EXPECT_THROW(kernels::centre_columns(bad_type), qad::Error);
  kernels::PairSums bad_out{x, x, torch::empty({2, 3})};
  EXPECT_THROW(kernels::pair_sums(bad_out), qad::Error);
  kernels::PairSums bad_shape{x, torch::randn({2, 8, 5}), torch::empty({2, 3}, torch::kFloat64)};
  EXPECT_THROW(kernels::pair_sums(bad_shape), qad::Error);
}

}  // namespace
}  // namespace qad::loss
