// The per-row softmax kernel (loss/softmax_rows_cuda.cu) against its plain reference on fresh random logits,
// with every output poisoned (NaN) first: FP32, BF16 and FP16; vocabularies that take the 16-byte vector path
// (3000, 151936) and the scalar path (3001); rows with -inf teacher logits; T = 1 with CE and T = 2 without.
// The reference computes in FP64 from the same rounded logits, so the tolerances are the kernel's FP32
// reductions and the output's rounding. Skips without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "common/test_util.h"
#include "loss/softmax_rows.h"

namespace qad::loss {
namespace {

TEST(SoftmaxRowsCuda, KernelEqualsReferenceWithPoisonedOutputs) {
  QAD_REQUIRE_GPU();
  auto gen = qad::testing::seeded_generator(47);
  struct Shape {
    int64_t rows, V;
  };
  for (const auto& sh : {Shape{37, 3000}, Shape{29, 3001}, Shape{4, 151936}}) {
    for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      for (double T : {1.0, 2.0}) {
        auto s = (torch::randn({sh.rows, sh.V}, gen) * 4).to(dtype);
        auto t = (torch::randn({sh.rows, sh.V}, gen) * 4).to(dtype);
        t[1].narrow(0, 5, 40).fill_(-std::numeric_limits<float>::infinity());
        auto labels = torch::randint(sh.V, {sh.rows}, gen, torch::kLong);
        auto a_kl = torch::rand({sh.rows}, gen) * 1e-3, a_ce = torch::rand({sh.rows}, gen) * 1e-3;
        kernels::SoftmaxRows out[2];
        for (int k = 0; k < 2; ++k) {
          const auto dev = k == 0 ? torch::Device(torch::kCPU) : torch::Device(torch::kCUDA);
          auto& a = out[k];
          a.student = s.to(dev);
          a.teacher = t.to(dev);
          a.temperature = T;
          a.kl_coef = a_kl.to(dev);
          a.kl = torch::full({sh.rows}, NAN, torch::TensorOptions().device(dev));
          a.grad = torch::full({sh.rows, sh.V}, NAN, torch::TensorOptions().dtype(dtype).device(dev));
          if (T == 1.0) {
            a.labels = labels.to(dev);
            a.ce_coef = a_ce.to(dev);
            a.ce = torch::full({sh.rows}, NAN, torch::TensorOptions().device(dev));
          }
          if (k == 0) {
            kernels::softmax_rows_reference(a);
          } else {
            kernels::softmax_rows(a);  // dispatches to the kernel for CUDA tensors
          }
        }
        const std::string what = std::string(c10::toString(dtype)) + " V " + std::to_string(sh.V) + " T " + std::to_string(T);
        auto kl_gpu = out[1].kl.cpu().to(torch::kFloat64), kl_ref = out[0].kl.to(torch::kFloat64);
        ASSERT_TRUE(torch::isfinite(kl_gpu).all().item<bool>()) << what;
        EXPECT_LE((kl_gpu - kl_ref).abs().max().item<double>(), 2e-5 * (1 + kl_ref.abs().max().item<double>())) << what;
        if (T == 1.0) {
          auto ce_gpu = out[1].ce.cpu().to(torch::kFloat64), ce_ref = out[0].ce.to(torch::kFloat64);
          ASSERT_TRUE(torch::isfinite(ce_gpu).all().item<bool>()) << what;
          EXPECT_LE((ce_gpu - ce_ref).abs().max().item<double>(), 2e-5 * (1 + ce_ref.abs().max().item<double>())) << what;
        }
        // The gradient is stored in the logits' dtype: at most one rounding step apart, plus FP32 noise.
        auto g_gpu = out[1].grad.cpu().to(torch::kFloat64), g_ref = out[0].grad.to(torch::kFloat64);
        ASSERT_TRUE(torch::isfinite(g_gpu).all().item<bool>()) << what;
        const double ulp = dtype == torch::kFloat32 ? 1e-5 : dtype == torch::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
        auto excess = ((g_gpu - g_ref).abs() - ulp * g_ref.abs() - 1e-6 * g_ref.abs().max()).max().item<double>();
        EXPECT_LE(excess, 0.0) << what;
      }
    }
  }
}

}  // namespace
}  // namespace qad::loss
