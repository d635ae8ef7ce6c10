// Host buffers (see host_buffer.h). The CUDA runtime only where LibTorch has CUDA.
#include "train/host_buffer.h"

#include <fstream>
#include <sstream>
#include <string>

#ifdef QAD_HAS_CUDA
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>
#endif

#include "util/error.h"

namespace qad::train {

torch::Tensor host_buffer(int64_t elements, torch::ScalarType dtype, bool pinned) {
  QAD_CHECK(elements >= 0, "host_buffer: {} elements", elements);
  const auto options = torch::TensorOptions().dtype(dtype).device(torch::kCPU);
  if (!pinned) return torch::empty({elements}, options);
#ifdef QAD_HAS_CUDA
  const size_t bytes = static_cast<size_t>(elements) * c10::elementSize(dtype);
  void* ptr = nullptr;
  const auto rc = cudaHostAlloc(&ptr, bytes == 0 ? 1 : bytes, cudaHostAllocDefault);
  QAD_CHECK(rc == cudaSuccess, "could not page-lock {:.2f} GB of host memory for the offloaded optimizer state "
            "({}); free host memory, or train without --offload", static_cast<double>(bytes) / 1e9,
            cudaGetErrorString(rc));
  return torch::from_blob(ptr, {elements}, [](void* p) { cudaFreeHost(p); }, options);
#else
  fail("host_buffer: page-locked memory needs a CUDA build");
#endif
}

std::optional<int64_t> available_host_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream in(line.substr(13));
    int64_t kb = 0;
    if (in >> kb) return kb * 1024;
  }
  return std::nullopt;
}

}  // namespace qad::train
