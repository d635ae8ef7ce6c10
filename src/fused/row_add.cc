// add_rows_ (row_add.h): checks, dispatch (the CUDA kernel for CUDA tensors of the kernel's dtypes, ATen's
// index_add_ otherwise, which computes the same for distinct indices), and the plain loop reference.
#include "fused/row_add.h"

#include <vector>

#include "util/error.h"

namespace qad::fused {
namespace kernels {
#ifdef QAD_HAS_CUDA
bool add_rows_cuda(torch::Tensor& dst, const torch::Tensor& index, const torch::Tensor& src);  // row_add_cuda.cu
#endif
}  // namespace kernels

namespace {

void check(const torch::Tensor& dst, const torch::Tensor& index, const torch::Tensor& src) {
  QAD_CHECK(dst.defined() && dst.dim() == 2 && dst.is_contiguous(), "add_rows_: dst must be a contiguous [rows, features] tensor");
  QAD_CHECK(index.defined() && index.dim() == 1 && index.scalar_type() == torch::kLong && index.device() == dst.device(),
            "add_rows_: index must be an int64 [n] tensor on dst's device");
  QAD_CHECK(src.defined() && src.dim() == 2 && src.size(0) == index.size(0) && src.size(1) == dst.size(1) &&
                src.scalar_type() == dst.scalar_type() && src.device() == dst.device(),
            "add_rows_: src must be [n, features] in dst's dtype on dst's device (index has {} rows, dst {} features)",
            index.size(0), dst.size(1));
}

}  // namespace

torch::Tensor& add_rows_(torch::Tensor& dst, const torch::Tensor& index, const torch::Tensor& src) {
  check(dst, index, src);
#ifdef QAD_HAS_CUDA
  if (dst.is_cuda() && kernels::add_rows_cuda(dst, index, src.contiguous())) return dst;
#endif
  dst.index_add_(0, index, src);
  return dst;
}

void add_rows_reference(torch::Tensor& dst, const torch::Tensor& index, const torch::Tensor& src) {
  check(dst, index, src);
  auto d = dst.to(torch::kCPU, torch::kFloat32).contiguous();
  auto s = src.to(torch::kCPU, torch::kFloat32).contiguous();
  auto idx = index.to(torch::kCPU).contiguous();
  const int64_t n = idx.size(0), H = d.size(1), N = d.size(0);
  const int64_t* ip = idx.data_ptr<int64_t>();
  float* dp = d.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  std::vector<bool> seen(static_cast<size_t>(N));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = ip[i];
    QAD_CHECK(r >= 0 && r < N && !seen[static_cast<size_t>(r)], "add_rows_reference: index {} is out of range or repeated", r);
    seen[static_cast<size_t>(r)] = true;
    for (int64_t j = 0; j < H; ++j) dp[r * H + j] += sp[i * H + j];
  }
  // Every element is the float sum rounded once to dst's dtype (untouched rows convert back exactly).
  dst.copy_(d);
}

}  // namespace qad::fused
