// CUDA kernels of add_gather_rows_out and add_scatter_rows_out (add_gather_rows.h); the references are in
// add_gather_rows.cc. One CTA per row: each thread adds 16-byte vectors of a and b in float and rounds once; the
// gather stores the same bits to out and, when the row is sampled, to its slot of `rows`; the scatter adds the
// row's slot of `rows` and rounds once more.
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <initializer_list>

#include "fused/add_gather_rows.h"
#include "fused/cuda_util.cuh"
#include "nvfp4/dtype_dispatch.h"

namespace qad::fused::kernels {
namespace {

using device::check_launch;
using device::kPer;
using device::load_vec;
using device::round_to;
using device::store_vec;
using nvfp4::device::Io;

// kGather: out = round(a + b), and the same bits into the row's slot of `rows` when it is sampled. Otherwise (the
// scatter) out = round(round(a + b) + rows[slot]): the unfused path's two additions. The scatter may write into a
// (out == a): each element is read and written by one thread, so a and out carry no __restrict__ and a is read
// through plain loads.
template <typename T, bool kGather>
__global__ void add_rows_kernel(typename Io<T>::Raw* out, const typename Io<T>::Raw* a,
                                const typename Io<T>::Raw* __restrict__ b, const int32_t* __restrict__ slot_of_row,
                                typename Io<T>::Raw* rows, int64_t vecs_per_row, int64_t n) {
  using Raw = typename Io<T>::Raw;
  const int64_t r = blockIdx.x;
  const int64_t base = r * vecs_per_row;
  for (int64_t v = threadIdx.x; v < vecs_per_row; v += blockDim.x) {
    float x[kPer<T>], y[kPer<T>];
    const uint4 a_bits = reinterpret_cast<const uint4*>(a)[base + v];
    const Raw* ae = reinterpret_cast<const Raw*>(&a_bits);
    load_vec<T>(b, base + v, y);
    // The slot is read after a and b are asked for, and checked only then: a check before the loads makes every
    // CTA wait for the slot before it can start its row: two memory latencies in series instead of one.
    const int32_t slot = __ldg(slot_of_row + r);
    CUDA_KERNEL_ASSERT(slot >= -1 && slot < n);
#pragma unroll
    for (int j = 0; j < kPer<T>; ++j) x[j] = Io<T>::to_float(ae[j]);
    if constexpr (kGather) {
      uint4 bits;
      Raw* e = reinterpret_cast<Raw*>(&bits);
#pragma unroll
      for (int j = 0; j < kPer<T>; j += 2) Io<T>::store2(e + j, x[j] + y[j], x[j + 1] + y[j + 1]);
      reinterpret_cast<uint4*>(out)[base + v] = bits;
      if (slot >= 0) reinterpret_cast<uint4*>(rows)[slot * vecs_per_row + v] = bits;
    } else {
#pragma unroll
      for (int j = 0; j < kPer<T>; ++j) x[j] = round_to<T>(x[j] + y[j]);
      if (slot >= 0) {
        load_vec<T>(rows, slot * vecs_per_row + v, y);
#pragma unroll
        for (int j = 0; j < kPer<T>; ++j) x[j] += y[j];
      }
      store_vec<T>(out, base + v, x);
    }
  }
}

}  // namespace

void add_rows_pass_cuda(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                        const torch::Tensor& slot_of_row, const torch::Tensor& rows, bool gather) {
  const int64_t H = a.size(-1), N = H == 0 ? 0 : a.numel() / H;
  if (N == 0 || H == 0) return;
  for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{&out, &a, &b, &rows}) {
    // (Tensor storage is 16-byte aligned at offset 0; a view at another offset would not be.)
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0,
                "add_gather_rows: the tensors must start at 16-byte boundaries");
  }
  c10::cuda::CUDAGuard guard(a.device());
  nvfp4::dispatch_float_types(a.scalar_type(), "fused::add_rows_pass_cuda", [&](auto tag) {
    using T = decltype(tag);
    using Raw = typename Io<T>::Raw;
    const int64_t vecs = H / kPer<T>;
    const int threads = static_cast<int>(std::min<int64_t>(256, ((vecs + 31) / 32) * 32));
    auto kernel = gather ? add_rows_kernel<T, true> : add_rows_kernel<T, false>;
    kernel<<<static_cast<unsigned>(N), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<Raw*>(out.data_ptr<T>()), reinterpret_cast<const Raw*>(a.data_ptr<T>()),
        reinterpret_cast<const Raw*>(b.data_ptr<T>()), slot_of_row.data_ptr<int32_t>(),
        reinterpret_cast<Raw*>(rows.data_ptr<T>()), vecs, rows.size(0));
    check_launch();
  });
}

}  // namespace qad::fused::kernels
