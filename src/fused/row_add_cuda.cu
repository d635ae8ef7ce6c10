// CUDA kernel of add_rows_ (row_add.h); the reference is add_rows_reference in row_add.cc. One CTA per source
// row; each thread adds 16-byte vectors of it into the destination row in float and stores them rounded once.
// The indices are distinct, so no element is written by two threads (no atomics).
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "fused/cuda_util.cuh"
#include "fused/row_add.h"
#include "nvfp4/dtype_dispatch.h"

namespace qad::fused::kernels {
namespace {

using device::check_launch;
using device::kPer;
using device::load_vec;
using device::store_vec;
using nvfp4::device::Io;

template <typename T>
__global__ void add_rows_kernel(typename Io<T>::Raw* __restrict__ dst, const int64_t* __restrict__ index,
                                const typename Io<T>::Raw* __restrict__ src, int64_t N, int64_t vecs_per_row) {
  const int64_t i = blockIdx.x, r = index[i];
  CUDA_KERNEL_ASSERT(r >= 0 && r < N);
  auto* d = dst + r * vecs_per_row * kPer<T>;
  const auto* s = src + i * vecs_per_row * kPer<T>;
  for (int64_t v = threadIdx.x; v < vecs_per_row; v += blockDim.x) {
    float a[kPer<T>], b[kPer<T>];
    load_vec<T>(s, v, a);
    // dst is read and written here: a plain load, not the read-only __ldg path of load_vec.
    const uint4 bits = reinterpret_cast<const uint4*>(d)[v];
    const auto* e = reinterpret_cast<const typename Io<T>::Raw*>(&bits);
#pragma unroll
    for (int j = 0; j < kPer<T>; ++j) b[j] = Io<T>::to_float(e[j]) + a[j];
    store_vec<T>(d, v, b);
  }
}

}  // namespace

// False where the kernel does not apply (odd width, misaligned rows): the caller falls back to index_add_.
bool add_rows_cuda(torch::Tensor& dst, const torch::Tensor& index, const torch::Tensor& src) {
  const auto dt = dst.scalar_type();
  if (dt != torch::kFloat32 && dt != torch::kBFloat16 && dt != torch::kFloat16) return false;
  const int64_t n = index.size(0), H = dst.size(1);
  if (n == 0 || H == 0) return true;
  bool ok = false;
  c10::cuda::CUDAGuard guard(dst.device());
  nvfp4::dispatch_float_types(dt, "fused::add_rows_cuda", [&](auto tag) {
    using T = decltype(tag);
    using Raw = typename Io<T>::Raw;
    auto* d = reinterpret_cast<Raw*>(dst.data_ptr<T>());
    const auto* s = reinterpret_cast<const Raw*>(src.data_ptr<T>());
    if (H % kPer<T> != 0 || reinterpret_cast<uintptr_t>(d) % 16 != 0 || reinterpret_cast<uintptr_t>(s) % 16 != 0) return;
    const int64_t vecs = H / kPer<T>;
    const int threads = static_cast<int>(std::min<int64_t>(256, ((vecs + 31) / 32) * 32));
    auto idx = index.contiguous();
    add_rows_kernel<T><<<static_cast<unsigned>(n), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        d, idx.data_ptr<int64_t>(), s, dst.size(0), vecs);
    check_launch();
    ok = true;
  });
  return ok;
}

}  // namespace qad::fused::kernels
