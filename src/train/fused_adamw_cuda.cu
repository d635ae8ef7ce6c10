// CUDA kernels of the fused AdamW (see fused_adamw.h): a multi-tensor launch over fixed chunks of every tensor.
// The host packs one table (tensor pointers, then chunk -> tensor/offset) into pinned memory and copies it
// asynchronously, so nothing here waits for the device.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <cstring>

#include "train/fused_adamw_cuda.h"

namespace qad::train::detail {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kNormChunk;  // elements per block (the norm's partials use the same chunks)

struct TensorArgs {
  float* master;
  float* exp_avg;
  float* exp_avg_sq;
  const void* grad;
  __nv_bfloat16* param;  // null: master is the parameter
  int64_t n;
  int32_t grad_bf16;
  int32_t decay;
};

struct Chunk {
  int32_t tensor;
  int32_t pad;
  int64_t start;
};

__device__ __forceinline__ float load_grad(const void* g, int64_t i, bool bf16) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(g)[i]) : static_cast<const float*>(g)[i];
}

__global__ void adamw_kernel(const TensorArgs* tensors, const Chunk* chunks, AdamWScalars applied,
                             AdamWScalars if_previous_skipped, const float* grad_scale, const float* apply,
                             const float* previous_apply) {
  if (*apply == 0.0f) return;  // a skipped step writes nothing
  const AdamWScalars s = previous_apply != nullptr && *previous_apply == 0.0f ? if_previous_skipped : applied;
  const Chunk c = chunks[blockIdx.x];
  const TensorArgs t = tensors[c.tensor];
  const float scale = *grad_scale;
  const int64_t end = min(c.start + kChunk, t.n);
  for (int64_t i = c.start + threadIdx.x; i < end; i += kThreads) {
    float p = t.master[i], m = t.exp_avg[i], v = t.exp_avg_sq[i];
    const float g = __fmul_rn(load_grad(t.grad, i, t.grad_bf16 != 0), scale);
    adamw_element(p, m, v, g, s, t.decay != 0);
    t.master[i] = p;
    t.exp_avg[i] = m;
    t.exp_avg_sq[i] = v;
    if (t.param != nullptr) t.param[i] = __float2bfloat16_rn(p);
  }
}

__global__ void square_sum_kernel(const TensorArgs* tensors, const Chunk* chunks, float* partials) {
  const Chunk c = chunks[blockIdx.x];
  const TensorArgs t = tensors[c.tensor];
  const int64_t end = min(c.start + kChunk, t.n);
  float acc = 0.0f;
  for (int64_t i = c.start + threadIdx.x; i < end; i += kThreads) {
    const float g = load_grad(t.grad, i, t.grad_bf16 != 0);
    acc = __fadd_rn(acc, __fmul_rn(g, g));
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  __shared__ float warp_sums[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    partials[blockIdx.x] = total;
  }
}

// The launch table on the device: [TensorArgs x n][Chunk x chunks], from pinned memory without a host wait
// (the caching host allocator keeps the pinned block alive until the copy has run).
struct Table {
  torch::Tensor device;
  const TensorArgs* tensors = nullptr;
  const Chunk* chunks = nullptr;
  int64_t num_chunks = 0;
};

Table make_table(const std::vector<TensorArgs>& args, const torch::Device& d) {
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < args.size(); ++i) {
    for (int64_t b = 0; b < args[i].n; b += kChunk) chunks.push_back({static_cast<int32_t>(i), 0, b});
  }
  const size_t head = args.size() * sizeof(TensorArgs);
  const size_t bytes = head + chunks.size() * sizeof(Chunk);
  auto host = torch::empty({static_cast<int64_t>(bytes)}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
  std::memcpy(host.data_ptr<uint8_t>(), args.data(), head);
  if (!chunks.empty()) std::memcpy(host.data_ptr<uint8_t>() + head, chunks.data(), chunks.size() * sizeof(Chunk));
  Table t;
  t.device = host.to(d, /*non_blocking=*/true);
  t.tensors = reinterpret_cast<const TensorArgs*>(t.device.data_ptr<uint8_t>());
  t.chunks = reinterpret_cast<const Chunk*>(t.device.data_ptr<uint8_t>() + head);
  t.num_chunks = static_cast<int64_t>(chunks.size());
  return t;
}

}  // namespace

void fused_adamw_cuda(const std::vector<AdamWTensors>& tensors, const AdamWScalars& s, const torch::Tensor& grad_scale,
                      const torch::Tensor& apply, const torch::Tensor& previous_apply,
                      const AdamWScalars& if_previous_skipped) {
  const auto d = tensors.front().master.device();
  c10::cuda::CUDAGuard guard(d);
  std::vector<TensorArgs> args;
  for (const auto& t : tensors) {
    if (t.master.numel() == 0) continue;
    args.push_back({t.master.data_ptr<float>(), t.exp_avg.data_ptr<float>(), t.exp_avg_sq.data_ptr<float>(),
                    t.grad.data_ptr(),
                    t.param.defined() ? reinterpret_cast<__nv_bfloat16*>(t.param.data_ptr()) : nullptr,
                    t.master.numel(), t.grad.scalar_type() == torch::kBFloat16 ? 1 : 0, t.decay ? 1 : 0});
  }
  if (args.empty()) return;
  auto table = make_table(args, d);
  adamw_kernel<<<static_cast<unsigned>(table.num_chunks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      table.tensors, table.chunks, s, if_previous_skipped, grad_scale.data_ptr<float>(), apply.data_ptr<float>(),
      previous_apply.defined() ? previous_apply.data_ptr<float>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The kernel wrote through raw pointers: move the version counters as an in-place op would, so that caches
  // keyed on them (the NVFP4 hooks' quantized weights) see the new values.
  for (const auto& t : tensors) {
    t.master.unsafeGetTensorImpl()->bump_version();
    if (t.param.defined()) t.param.unsafeGetTensorImpl()->bump_version();
  }
}

torch::Tensor grad_square_partials_cuda(const std::vector<torch::Tensor>& grads) {
  const auto d = grads.front().device();
  c10::cuda::CUDAGuard guard(d);
  std::vector<torch::Tensor> keep;  // contiguous copies live until the launch is queued
  std::vector<TensorArgs> args;
  for (const auto& g0 : grads) {
    if (g0.numel() == 0) continue;
    auto g = g0.contiguous();
    keep.push_back(g);
    args.push_back({nullptr, nullptr, nullptr, g.data_ptr(), nullptr, g.numel(),
                    g.scalar_type() == torch::kBFloat16 ? 1 : 0, 0});
  }
  if (args.empty()) return torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32).device(d));
  auto table = make_table(args, d);
  auto partials = torch::empty({table.num_chunks}, torch::TensorOptions().dtype(torch::kFloat32).device(d));
  square_sum_kernel<<<static_cast<unsigned>(table.num_chunks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      table.tensors, table.chunks, partials.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partials;
}

}  // namespace qad::train::detail
