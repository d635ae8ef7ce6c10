// The CKA kernels (loss/cka_kernels_cuda.cu) against their plain references on fresh random inputs with poisoned
// (NaN) outputs: the vector path (widths that are multiples of the 16-byte vector, including a partial last
// tile) and the scalar path (odd widths), one row, FP32 / BF16 / FP16 inputs; the centred Gram sums and means;
// the backward's centred kernel combination into BF16 bit for bit; then the batched CKA on CUDA, which runs them,
// against FP64 on the CPU in both the Gram and the feature form and the BF16 path, value and gradient.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>
#include <tuple>
#include <utility>
#include <vector>

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

// The strips (or the whole matrix) on `device`.
kernels::GramStrips strips_on(const kernels::GramStrips& g, torch::Device device) {
  std::vector<torch::Tensor> out;
  for (const auto& s : g.strips) out.push_back(s.to(device));
  return kernels::GramStrips(out);
}

// GramSums with every output poisoned (NaN), on `device`.
kernels::GramSums poisoned_gram_sums(const kernels::GramStrips& k, const kernels::GramStrips& l, torch::Device device) {
  const int64_t L = k.strips[0].size(0), n = k.n();
  auto f32 = torch::dtype(torch::kFloat32).device(device);
  return {strips_on(k, device),
          strips_on(l, device),
          torch::full({L, 3}, NAN, torch::dtype(torch::kFloat64).device(device)),
          torch::full({L, n}, NAN, f32),
          torch::full({L, n}, NAN, f32),
          torch::full({L}, NAN, f32),
          torch::full({L}, NAN, f32),
          torch::full({L}, NAN, torch::dtype(torch::kFloat64).device(device)),
          torch::full({L}, NAN, f32)};
}

// The kernel's sums and means against the reference's: the same exact products summed in double in another
// order differ by a few 2^-53 of the raw (uncentred) sums of |products| (k, l: the whole matrices), which exceed
// the centred results by the offsets' factor (~1e4 in these tests); the means are the double sums rounded to
// float, and another summation order can move a rounding by one ulp.
void expect_sums_near_reference(const kernels::GramSums& gpu, const kernels::GramSums& ref, const torch::Tensor& k,
                                const torch::Tensor& l, const std::string& what) {
  auto kd = k.to(torch::kFloat64), ld = l.to(torch::kFloat64);
  auto raw = torch::stack({(kd * ld).abs().sum({1, 2}), (kd * kd).sum({1, 2}), (ld * ld).sum({1, 2})}, 1);
  EXPECT_LE(((gpu.sums.cpu() - ref.sums).abs() / raw).max().item<double>(), 1e-12) << what;
  for (const auto& [got, want] : {std::pair{gpu.k_row_means, ref.k_row_means}, {gpu.l_row_means, ref.l_row_means},
                                  {gpu.k_mean, ref.k_mean}, {gpu.l_mean, ref.l_mean}}) {
    auto g = got.cpu();
    ASSERT_TRUE(torch::isfinite(g).all().item<bool>()) << what;
    EXPECT_TRUE(torch::allclose(g, want, 1.2e-7, 0)) << what;
  }
}

TEST(CkaKernelsCuda, CentredGramSumsEqualReferenceWithPoisonedOutputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(72);
  // The recipe's shape (28 layers x 1024 tokens: the vector path), odd sizes (the scalar path), one token.
  for (const auto& shape : {std::vector<int64_t>{28, 1024, 256}, {3, 37, 20}, {2, 13, 8}, {1, 1, 4}}) {
    auto x = torch::randn(shape, gen) + 3.0, y = torch::randn(shape, gen) * 2 - 1.0;
    // Exactly symmetric, as the kernels assume (row sums stand for column sums).
    auto k = x.bmm(x.transpose(1, 2)), l = y.bmm(y.transpose(1, 2));
    k = (k + k.transpose(1, 2)) / 2, l = (l + l.transpose(1, 2)) / 2;
    auto ref = poisoned_gram_sums(k, l, torch::kCPU);
    kernels::centred_gram_sums_reference(ref);
    auto gpu = poisoned_gram_sums(k, l, torch::kCUDA);
    kernels::centred_gram_sums(gpu);
    const std::string what = std::to_string(shape[0]) + "x" + std::to_string(shape[1]);
    auto sums = gpu.sums.cpu();
    ASSERT_TRUE(torch::isfinite(sums).all().item<bool>()) << what;
    // The layers' CKA from the kernel's own sums, as the tensor ops form it (bit for bit; one token's centred
    // sums are 0, and its 0 / 0 is NaN either way: same_bits lets NaN equal NaN).
    auto cka = gpu.sums.select(1, 0) / torch::sqrt(gpu.sums.select(1, 1) * gpu.sums.select(1, 2));
    EXPECT_TRUE(qad::testing::same_bits(gpu.cka, cka)) << what;
    EXPECT_TRUE(qad::testing::same_bits(gpu.cka_float, cka.to(torch::kFloat32))) << what;
    if (shape[1] > 1) {
      EXPECT_TRUE(torch::isfinite(gpu.cka).all().item<bool>()) << what;
    }
    expect_sums_near_reference(gpu, ref, k, l, what);
  }
  // Deterministic: the same inputs give the same bits.
  auto x = torch::randn({4, 512, 64}, gen).cuda();
  auto k = x.bmm(x.transpose(1, 2));
  auto s1 = poisoned_gram_sums(k, k, torch::kCUDA), s2 = poisoned_gram_sums(k, k, torch::kCUDA);
  kernels::centred_gram_sums(s1);
  kernels::centred_gram_sums(s2);
  EXPECT_TRUE(torch::equal(s1.sums, s2.sums));
}

TEST(CkaKernelsCuda, BackwardFactorsEqualReferenceAndTensorOpsBitForBitWithPoisonedOutputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(75);
  auto f64 = torch::dtype(torch::kFloat64);
  for (const int64_t L : {int64_t{1}, int64_t{28}, int64_t{200}}) {  // 200: more than one CTA
    auto sums = torch::rand({L, 3}, gen, f64) * 1e7 + 0.5;
    auto cka = torch::rand({L}, gen, f64);
    for (auto go_type : {torch::kFloat32, torch::kFloat64}) {
      auto go = (torch::randn({2 * L}, gen, f64) * 0.04).to(go_type).slice(0, 0, 2 * L, 2);
      auto make = [&](torch::Device d) {
        auto s = sums.to(d);
        auto f32 = torch::dtype(torch::kFloat32).device(d);
        return kernels::BackwardFactors{cka.to(d), s.select(1, 1), s.select(1, 1), s.select(1, 2), go.to(d),
                                        torch::full({L}, NAN, f32), torch::full({L}, NAN, f32)};
      };
      auto ref = make(torch::kCPU);
      kernels::backward_factors_reference(ref);
      auto gpu = make(torch::kCUDA);
      kernels::backward_factors(gpu);
      const std::string what = std::to_string(L) + " layers, go " + c10::toString(go_type);
      EXPECT_TRUE(torch::equal(gpu.beta.cpu(), ref.beta)) << what;
      EXPECT_TRUE(torch::equal(gpu.alpha.cpu(), ref.alpha)) << what;
      // The tensor ops the kernel replaces, on the GPU.
      auto g = gpu.go.to(torch::kFloat64);
      EXPECT_TRUE(torch::equal(gpu.beta, (-2.0 * gpu.cka / gpu.f_own * g).to(torch::kFloat32))) << what;
      EXPECT_TRUE(torch::equal(gpu.alpha, (2.0 / torch::sqrt(gpu.fxx * gpu.fyy) * g).to(torch::kFloat32))) << what;
    }
  }
}

// go_scale and an expanded scalar go (the CKA-QAD term's backward): the reference's bits.
TEST(CkaKernelsCuda, BackwardFactorsWithGoScaleEqualReferenceBitForBit) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(79);
  auto f64 = torch::dtype(torch::kFloat64);
  const int64_t L = 28;
  auto sums = torch::rand({L, 3}, gen, f64) * 1e7 + 0.5;
  auto cka = torch::rand({L}, gen, f64);
  for (const double scale : {1.0, -0.1 / 28, 3.7}) {
    auto make = [&](torch::Device d) {
      auto s = sums.to(d);
      auto f32 = torch::dtype(torch::kFloat32).device(d);
      return kernels::BackwardFactors{cka.to(d), s.select(1, 0), s.select(1, 1), s.select(1, 2),
                                      torch::full({1}, 0.8125f, f32).expand({L}), torch::full({L}, NAN, f32),
                                      torch::full({L}, NAN, f32), scale};
    };
    auto ref = make(torch::kCPU);
    kernels::backward_factors_reference(ref);
    auto gpu = make(torch::kCUDA);
    kernels::backward_factors(gpu);
    EXPECT_TRUE(torch::equal(gpu.beta.cpu(), ref.beta)) << scale;
    EXPECT_TRUE(torch::equal(gpu.alpha.cpu(), ref.alpha)) << scale;
  }
}

TEST(CkaKernelsCuda, CkaTermEqualsReferenceBitForBitWithPoisonedOutputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(80);
  for (const int64_t L : {int64_t{1}, int64_t{28}, int64_t{61}}) {
    auto cka = torch::rand({2 * L}, gen, torch::kFloat64).slice(0, 0, 2 * L, 2);  // stride 2
    for (auto loss_type : {torch::kFloat32, torch::kFloat64}) {
      auto make = [&](torch::Device d) {
        auto f64 = torch::dtype(torch::kFloat64).device(d);
        return kernels::CkaTerm{cka.to(d), 0.1, torch::full({}, NAN, f64), torch::full({}, NAN, f64.dtype(loss_type))};
      };
      auto ref = make(torch::kCPU);
      kernels::cka_term_reference(ref);
      auto gpu = make(torch::kCUDA);
      kernels::cka_term(gpu);
      const std::string what = std::to_string(L) + " layers, loss " + c10::toString(loss_type);
      EXPECT_TRUE(torch::equal(gpu.term.cpu(), ref.term)) << what;
      EXPECT_TRUE(torch::equal(gpu.loss.cpu(), ref.loss)) << what;
      EXPECT_NEAR(ref.term.item<double>(), (1 - cka).mean().item<double>(), 1e-15) << what;
    }
  }
}

TEST(CkaKernelsCuda, CombineKernelsEqualsReferenceBitForBitWithPoisonedOutputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(68);
  // The vector path ([28, 1024, 1024]: the recipe's 1024 tokens, 28 layers; 12 x 12) and the scalar one (odd sizes).
  for (const auto& shape : {std::vector<int64_t>{28, 1024, 1024}, {2, 12, 12}, {3, 7, 7}, {1, 1, 1}}) {
    const int64_t L = shape[0], n = shape[1];
    auto own = torch::randn(shape, gen) * 30, other = torch::randn(shape, gen) * 30;
    auto own_rows = torch::randn({L, n}, gen), other_rows = torch::randn({L, n}, gen) * 3;
    auto own_mean = torch::randn({L}, gen), other_mean = torch::randn({L}, gen);
    auto beta = torch::randn({L}, gen), alpha = torch::randn({L}, gen);
    // Without and with the correction columns (8: the backward's; 3: an odd width takes the scalar path).
    for (int64_t extra : {0, 8, 3}) {
      const std::vector<int64_t> out_shape{L, n, n + extra};
      kernels::CombineKernels ref{{own, own_rows, own_mean}, {other, other_rows, other_mean}, beta, alpha,
                                  torch::full(out_shape, NAN, torch::kBFloat16)};
      kernels::combine_kernels_reference(ref);
      auto cuda = [](const torch::Tensor& t) { return t.cuda(); };
      kernels::CombineKernels gpu{{cuda(own), cuda(own_rows), cuda(own_mean)},
                                  {cuda(other), cuda(other_rows), cuda(other_mean)},
                                  cuda(beta),
                                  cuda(alpha),
                                  torch::full(out_shape, NAN, torch::dtype(torch::kBFloat16).device(torch::kCUDA))};
      kernels::combine_kernels(gpu);
      auto got = gpu.out.cpu();
      const std::string what = std::to_string(L) + "x" + std::to_string(n) + " + " + std::to_string(extra);
      ASSERT_TRUE(torch::isfinite(got.to(torch::kFloat32)).all().item<bool>()) << what;
      EXPECT_TRUE(qad::testing::same_bits(got, ref.out)) << what;
    }
  }
}

// The strip kernels (centred_gram_sums and combine_kernels on GramStrips) against the references, which read the
// whole matrix the strips stand for: random strips (their diagonal blocks not symmetric, as a GEMM may round them),
// poisoned outputs. Layouts: the recipe's (28 layers x 1024 tokens, four strips: the vector path), blocks that end
// inside a tile (600 = 2 x 300), blocks of 6 (the scalar path, mirrored rows stored in pairs), odd blocks of 5
// (single stores) and eight blocks of one row.
TEST(CkaKernelsCuda, StripKernelsEqualReferenceWithPoisonedOutputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(80);
  for (const auto& dims : {std::vector<int64_t>{28, 1024, 4}, {3, 600, 2}, {2, 18, 3}, {2, 15, 3}, {1, 8, 8}}) {
    const int64_t L = dims[0], n = dims[1], nb = dims[2], block = n / nb;
    std::vector<torch::Tensor> k_strips, l_strips;
    for (int64_t b = 0; b < nb; ++b) {
      k_strips.push_back(torch::randn({L, block, n - b * block}, gen) * 3 + 40.0);
      l_strips.push_back(torch::randn({L, block, n - b * block}, gen) * 2 - 10.0);
    }
    const kernels::GramStrips k(k_strips), l(l_strips);
    const std::string what = std::to_string(L) + "x" + std::to_string(n) + " in " + std::to_string(nb) + " strips";
    auto ref = poisoned_gram_sums(k, l, torch::kCPU);
    kernels::centred_gram_sums_reference(ref);
    auto gpu = poisoned_gram_sums(k, l, torch::kCUDA);
    kernels::centred_gram_sums(gpu);
    auto sums = gpu.sums.cpu();
    ASSERT_TRUE(torch::isfinite(sums).all().item<bool>()) << what;
    expect_sums_near_reference(gpu, ref, kernels::full_gram(k), kernels::full_gram(l), what);
    auto cka = gpu.sums.select(1, 0) / torch::sqrt(gpu.sums.select(1, 1) * gpu.sums.select(1, 2));
    EXPECT_TRUE(qad::testing::same_bits(gpu.cka, cka)) << what;
    // Deterministic: the same strips give the same bits.
    auto again = poisoned_gram_sums(k, l, torch::kCUDA);
    kernels::centred_gram_sums(again);
    EXPECT_TRUE(torch::equal(again.sums, gpu.sums)) << what;
    // The combination on the reference's own means, bit for bit, without and with correction columns.
    auto beta = torch::randn({L}, gen), alpha = torch::randn({L}, gen) * 0.5;
    for (int64_t extra : {0, 8, 3}) {
      const std::vector<int64_t> shape{L, n, n + extra};
      kernels::CombineKernels want{{ref.k, ref.k_row_means, ref.k_mean}, {ref.l, ref.l_row_means, ref.l_mean}, beta,
                                   alpha, torch::full(shape, NAN, torch::kBFloat16)};
      kernels::combine_kernels_reference(want);
      auto cuda = [](const torch::Tensor& t) { return t.cuda(); };
      kernels::CombineKernels got{{gpu.k, cuda(ref.k_row_means), cuda(ref.k_mean)},
                                  {gpu.l, cuda(ref.l_row_means), cuda(ref.l_mean)},
                                  cuda(beta),
                                  cuda(alpha),
                                  torch::full(shape, NAN, torch::dtype(torch::kBFloat16).device(torch::kCUDA))};
      kernels::combine_kernels(got);
      auto out = got.out.cpu();
      ASSERT_TRUE(torch::isfinite(out.to(torch::kFloat32)).all().item<bool>()) << what << " + " << extra;
      EXPECT_TRUE(qad::testing::same_bits(out, want.out)) << what << " + " << extra;
    }
  }
}

// Both sides' strips from one grouped cuBLAS call (gram_strips(x, y) on CUDA BF16 rows): integer rows make every
// product and sum exact in FP32, so the blocks equal the plain products bit for bit whatever order cuBLAS sums in.
// Rows with scratch between the layers (a layer stride beyond n rows), the same and different feature widths.
TEST(CkaKernelsCuda, GroupedGramBlocksEqualThePlainProducts) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(81);
  for (const auto& [n, px, py] : {std::tuple<int64_t, int64_t, int64_t>{1024, 64, 64}, {512, 32, 48}}) {
    const int64_t L = 3;
    auto rows = [&](int64_t p) {
      auto buffer = torch::randint(-8, 9, {L, n + 8, p}, gen).to(torch::kBFloat16).cuda();
      return buffer.narrow(1, 0, n);
    };
    auto x = rows(px), y = rows(py);
    const int64_t nb = kernels::gram_blocks(n), block = n / nb;
#ifdef QAD_HAS_CUDA  // declared on CUDA builds only (the test skips elsewhere)
    ASSERT_TRUE(kernels::gram_blocks_cuda_supports(x, y, block)) << n;
#endif
    const auto [k, l] = kernels::gram_strips(x, y);
    ASSERT_EQ(static_cast<int64_t>(k.strips.size()), nb);
    // Views of one [L, n, n] buffer per side.
    EXPECT_EQ(k.strips[1].data_ptr<float>() - k.strips[0].data_ptr<float>(), block * n + block) << n;
    EXPECT_EQ(k.strips[0].stride(1), n);
    auto xf = x.to(torch::kFloat32), yf = y.to(torch::kFloat32);
    const std::string what = std::to_string(n) + " rows, widths " + std::to_string(px) + "/" + std::to_string(py);
    for (int64_t b = 0; b < nb; ++b) {
      auto want_k = xf.narrow(1, b * block, block).bmm(xf.narrow(1, b * block, n - b * block).transpose(1, 2));
      auto want_l = yf.narrow(1, b * block, block).bmm(yf.narrow(1, b * block, n - b * block).transpose(1, 2));
      EXPECT_TRUE(torch::equal(k.strips[static_cast<size_t>(b)], want_k)) << what << ", strip " << b;
      EXPECT_TRUE(torch::equal(l.strips[static_cast<size_t>(b)], want_l)) << what << ", strip " << b;
    }
    // And the passes take the views as they take contiguous strips.
    auto f32 = torch::dtype(torch::kFloat32).device(torch::kCUDA);
    kernels::GramSums views{k, l, torch::empty({L, 3}, torch::dtype(torch::kFloat64).device(torch::kCUDA)),
                            torch::empty({L, n}, f32), torch::empty({L, n}, f32), torch::empty({L}, f32),
                            torch::empty({L}, f32)};
    kernels::centred_gram_sums(views);
    auto copies = kernels::gram_strips(x);
    for (auto& t : copies.strips) t = t.contiguous();
    kernels::GramSums plain{copies,
                            kernels::gram_strips(y),
                            torch::empty({L, 3}, torch::dtype(torch::kFloat64).device(torch::kCUDA)),
                            torch::empty({L, n}, f32),
                            torch::empty({L, n}, f32),
                            torch::empty({L}, f32),
                            torch::empty({L}, f32)};
    kernels::centred_gram_sums(plain);
    EXPECT_TRUE(torch::equal(views.sums, plain.sums)) << what;
    EXPECT_TRUE(torch::equal(views.k_row_means, plain.k_row_means)) << what;
    auto beta = torch::randn({L}, gen).cuda(), alpha = torch::randn({L}, gen).cuda();
    auto combined = [&](const kernels::GramSums& g) {
      kernels::CombineKernels c{{g.k, g.k_row_means, g.k_mean}, {g.l, g.l_row_means, g.l_mean}, beta, alpha,
                                torch::full({L, n, n + 8}, NAN, torch::dtype(torch::kBFloat16).device(torch::kCUDA))};
      kernels::combine_kernels(c);
      return c.out;
    };
    EXPECT_TRUE(qad::testing::same_bits(combined(views), combined(plain))) << what;
  }
}

// append_column_means against its reference, bit for bit, on rows inside a larger poisoned buffer (the layer
// stride of model::ForwardOutput's rows): the vector path (widths a multiple of 8) and the scalar one.
TEST(CkaKernelsCuda, AppendColumnMeansEqualsReferenceWithPoisonedScratch) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(77);
  for (const auto& dims : {std::vector<int64_t>{28, 1024, 2048, 8}, {3, 37, 72, 8}, {2, 5, 13, 9}, {1, 1, 8, 1}}) {
    const int64_t L = dims[0], n = dims[1], p = dims[2], e = dims[3];
    auto data = (torch::randn({L, n, p}, gen) * 2 + 7).to(torch::kBFloat16);
    auto make = [&](torch::Device device) {
      auto buffer = torch::full({L, n + e + 3, p}, NAN, torch::dtype(torch::kBFloat16).device(device));
      buffer.narrow(1, 0, n).copy_(data);
      return buffer;
    };
    auto ref_buffer = make(torch::kCPU), gpu_buffer = make(torch::kCUDA);
    kernels::AppendColumnMeans ref{ref_buffer.narrow(1, 0, n + e), n};
    kernels::append_column_means_reference(ref);
    kernels::AppendColumnMeans gpu{gpu_buffer.narrow(1, 0, n + e), n};
    kernels::append_column_means(gpu);
    const std::string what = std::to_string(L) + "x" + std::to_string(n) + "x" + std::to_string(p);
    auto got = gpu_buffer.cpu();
    EXPECT_TRUE(qad::testing::same_bits(got.narrow(1, 0, n + e).contiguous(), ref_buffer.narrow(1, 0, n + e).contiguous()))
        << what;
    EXPECT_TRUE(torch::isfinite(got.narrow(1, 0, n + e).to(torch::kFloat32)).all().item<bool>()) << what;
    EXPECT_TRUE(torch::isnan(got.narrow(1, n + e, 3).to(torch::kFloat32)).all().item<bool>()) << what;
  }
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
      // BF16 products with FP32 accumulation (the Gram form of the biased estimator takes them; the feature form
      // and the debiased estimator keep the float path): CKA within 5e-5 of FP64 and the gradient within the
      // bound above.
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

torch::Tensor c_fold_again(const torch::Tensor& t, const torch::Tensor& y) {
  return linear_cka_batched(t, y, CkaEstimator::kBiased, /*bf16_products=*/true, /*scratch_rows=*/8);
}

// The BF16 path at the recipe's size (28 layers, 1024 tokens, 2048 features) with the rows offset by 4 and by 20
// times their spread in every column: the uncentred products hold the offsets' second moments, so this is where
// FP32 accumulation would show. CKA within 5e-5 of FP64 and the gradient within 2 % of its largest element.
TEST(CkaKernelsCuda, Bf16PathAtTheRecipesSizeWithLargeOffsetsMatchesFp64) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(73);
  for (double offset : {4.0, 20.0}) {
    const std::vector<int64_t> shape{28, 1024, 2048};
    auto t = (torch::randn(shape, gen) + offset).to(torch::kBFloat16).cuda();
    auto s = (t.to(torch::kFloat32) + 0.3 * torch::randn(shape, gen).cuda()).to(torch::kBFloat16);
    auto y_bf = s.clone().requires_grad_(true);
    auto c_bf = linear_cka_batched(t, y_bf, CkaEstimator::kBiased, /*bf16_products=*/true);
    c_bf.sum().backward();
    auto y_64 = s.to(torch::kFloat64).requires_grad_(true);
    auto c_64 = linear_cka_batched(t.to(torch::kFloat64), y_64);
    c_64.sum().backward();
    const double value_err = (c_bf.to(torch::kFloat64) - c_64).abs().max().item<double>();
    const double scale = y_64.grad().abs().max().item<double>();
    const double grad_err = (y_bf.grad().to(torch::kFloat64) - y_64.grad()).abs().max().item<double>();
    std::cout << "offset " << offset << ": |cka - fp64| " << value_err << ", gradient error " << grad_err / scale
              << " of its largest element\n";
    EXPECT_LE(value_err, 5e-5) << offset;
    EXPECT_LE(grad_err, 2e-2 * scale) << offset;
    // The student's rows with scratch rows after them (as the training forward gathers them): the centring folded
    // into the backward's product, within the same bounds.
    auto buffer = torch::full({shape[0], shape[1] + 8, shape[2]}, NAN, s.options());
    buffer.narrow(1, 0, shape[1]).copy_(s);
    auto y_fold = buffer.narrow(1, 0, shape[1]).detach().requires_grad_(true);
    auto c_fold = linear_cka_batched(t, y_fold, CkaEstimator::kBiased, /*bf16_products=*/true, /*scratch_rows=*/8);
    c_fold.sum().backward();
    EXPECT_TRUE(torch::equal(c_fold, c_bf)) << offset;
    const double fold_err = (y_fold.grad().to(torch::kFloat64) - y_64.grad()).abs().max().item<double>();
    std::cout << "offset " << offset << ", centring folded into the product: gradient error " << fold_err / scale
              << " of its largest element\n";
    EXPECT_LE(fold_err, 2e-2 * scale) << offset;
    EXPECT_TRUE(torch::isfinite(buffer.narrow(1, shape[1], 8).to(torch::kFloat32)).all().item<bool>()) << offset;
    // The CKA-QAD term as the training step forms it (one operation, cka_term_batched): the same values, and a
    // gradient within the rounding of its per-layer factors of the composition's.
    auto y_term = buffer.narrow(1, 0, shape[1]).detach().requires_grad_(true);
    auto term = cka_term_batched(t, y_term, 0.1, CkaEstimator::kBiased, /*bf16_products=*/true, /*scratch_rows=*/8);
    EXPECT_TRUE(torch::equal(term.per_layer.to(torch::kFloat32), c_fold.detach())) << offset;
    y_fold.grad().zero_();
    ((1 - c_fold_again(t, y_fold)).mean() * 0.1).backward();
    term.loss.backward();
    const double term_scale = y_fold.grad().abs().max().item<double>();
    const double term_diff =
        (y_term.grad().to(torch::kFloat64) - y_fold.grad().to(torch::kFloat64)).abs().max().item<double>();
    EXPECT_LE(term_diff, 1e-2 * term_scale) << offset;
    EXPECT_GT(term_scale, 0.0) << offset;
  }
}

}  // namespace
}  // namespace qad::loss
