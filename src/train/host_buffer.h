// Large host buffers for the offloaded optimizer state (train/offload_adamw.h): page-locked where the model is on
// a CUDA device, so that the copy engines read and write them directly (asynchronously, at full PCIe speed)
// while the GPU computes; plain host memory otherwise. Allocated exactly (cudaHostAlloc), not through the caching
// host allocator, which rounds each block up to a power of two (a 33 GB buffer would take 34.4 GB, kept until exit).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>

namespace qad::train {

// A 1-D CPU tensor of `elements` (uninitialised). pinned: page-locked; needs a CUDA build with a visible device.
torch::Tensor host_buffer(int64_t elements, torch::ScalarType dtype, bool pinned);

// What /proc/meminfo calls MemAvailable (nullopt where it cannot be read).
std::optional<int64_t> available_host_bytes();

}  // namespace qad::train
