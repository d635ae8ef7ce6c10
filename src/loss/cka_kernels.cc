// Argument checks, dispatch and the plain loop references of the CKA passes (cka_kernels.h).
#include "loss/cka_kernels.h"

#include <algorithm>
#include <vector>

#include "util/error.h"

namespace qad::loss::kernels {
namespace {

void check_centre(const CentreColumns& a) {
  const auto& x = a.x;
  QAD_CHECK(x.defined() && x.dim() == 3 && x.is_contiguous() && x.size(1) >= 1,
            "centre_columns: x must be a contiguous [layers, rows, features] tensor with at least one row");
  const auto dt = x.scalar_type();
  QAD_CHECK(dt == torch::kFloat32 || dt == torch::kBFloat16 || dt == torch::kFloat16,
            "centre_columns: x must be float32, bfloat16 or float16, got {}", c10::toString(dt));
  QAD_CHECK(a.centred.defined() && a.centred.sizes() == x.sizes() &&
                (a.centred.scalar_type() == torch::kFloat32 || a.centred.scalar_type() == torch::kBFloat16) &&
                a.centred.is_contiguous() && a.centred.device() == x.device(),
            "centre_columns: centred must be a contiguous float32 or bfloat16 tensor of x's shape on x's device");
  QAD_CHECK(a.mean.defined() && a.mean.dim() == 3 && a.mean.size(0) == x.size(0) && a.mean.size(1) == 1 &&
                a.mean.size(2) == x.size(2) && a.mean.scalar_type() == torch::kFloat32 && a.mean.is_contiguous() &&
                a.mean.device() == x.device(),
            "centre_columns: mean must be a contiguous float32 [layers, 1, features] tensor on x's device");
}

void check_pair_sums(const PairSums& s) {
  QAD_CHECK(s.a.defined() && s.b.defined() && s.a.dim() == 3 && s.a.sizes() == s.b.sizes() &&
                s.a.scalar_type() == torch::kFloat32 && s.b.scalar_type() == torch::kFloat32 &&
                s.a.is_contiguous() && s.b.is_contiguous() && s.a.device() == s.b.device(),
            "pair_sums: a and b must be contiguous float32 [layers, rows, cols] tensors of one shape on one device");
  QAD_CHECK(s.out.defined() && s.out.dim() == 2 && s.out.size(0) == s.a.size(0) && s.out.size(1) == 3 &&
                s.out.scalar_type() == torch::kFloat64 && s.out.is_contiguous() && s.out.device() == s.a.device(),
            "pair_sums: out must be a contiguous float64 [layers, 3] tensor on the inputs' device");
}

}  // namespace

void centre_columns_reference(CentreColumns& a) {
  auto x = a.x.to(torch::kCPU, torch::kFloat32).contiguous();  // exact: every input type widens to float
  const int64_t L = x.size(0), n = x.size(1), p = x.size(2);
  auto centred = torch::empty({L, n, p}, torch::kFloat32), mean = torch::empty({L, 1, p}, torch::kFloat32);
  const float* xs = x.data_ptr<float>();
  float* cs = centred.data_ptr<float>();
  float* ms = mean.data_ptr<float>();
  std::vector<double> sum(static_cast<size_t>(p));
  for (int64_t l = 0; l < L; ++l) {
    const float* xl = xs + l * n * p;
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < p; ++j) sum[static_cast<size_t>(j)] += xl[i * p + j];
    }
    float* ml = ms + l * p;
    for (int64_t j = 0; j < p; ++j) ml[j] = static_cast<float>(sum[static_cast<size_t>(j)] / static_cast<double>(n));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < p; ++j) cs[(l * n + i) * p + j] = xl[i * p + j] - ml[j];
    }
  }
  a.centred.copy_(centred);  // rounds once to bfloat16 where centred is
  a.mean.copy_(mean);
}

void centre_columns(CentreColumns& a) {
  check_centre(a);
#ifdef QAD_HAS_CUDA
  if (a.x.is_cuda()) return centre_columns_cuda(a);
#endif
  centre_columns_reference(a);
}

void pair_sums_reference(PairSums& s) {
  auto a = s.a.to(torch::kCPU).contiguous(), b = s.b.to(torch::kCPU).contiguous();
  const int64_t L = a.size(0), m = a.size(1) * a.size(2);
  auto out = torch::empty({L, 3}, torch::kFloat64);
  const float* as = a.data_ptr<float>();
  const float* bs = b.data_ptr<float>();
  double* os = out.data_ptr<double>();
  for (int64_t l = 0; l < L; ++l) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = l * m; i < (l + 1) * m; ++i) {
      ab += static_cast<float>(as[i] * bs[i]);
      aa += static_cast<float>(as[i] * as[i]);
      bb += static_cast<float>(bs[i] * bs[i]);
    }
    os[l * 3] = ab, os[l * 3 + 1] = aa, os[l * 3 + 2] = bb;
  }
  s.out.copy_(out);
}

void pair_sums(PairSums& s) {
  check_pair_sums(s);
#ifdef QAD_HAS_CUDA
  if (s.a.is_cuda()) return pair_sums_cuda(s);
#endif
  pair_sums_reference(s);
}

}  // namespace qad::loss::kernels
