// free_device_bytes (device_memory.h): cudaMemGetInfo where LibTorch has CUDA.
#include "model/device_memory.h"

#ifdef QAD_HAS_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace qad::model {

std::optional<int64_t> free_device_bytes(torch::Device device) {
#ifdef QAD_HAS_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDAGuard guard(device.has_index() ? device.index() : c10::DeviceIndex{0});
    c10::cuda::CUDACachingAllocator::emptyCache();
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) return static_cast<int64_t>(free);
  }
#else
  (void)device;
#endif
  return std::nullopt;
}

std::optional<int64_t> total_device_bytes(torch::Device device) {
#ifdef QAD_HAS_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDAGuard guard(device.has_index() ? device.index() : c10::DeviceIndex{0});
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) return static_cast<int64_t>(total);
  }
#else
  (void)device;
#endif
  return std::nullopt;
}

}  // namespace qad::model
