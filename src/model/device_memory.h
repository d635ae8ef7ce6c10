// Free accelerator memory, for planning batch sizes (the generation KV cache).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>

namespace qad::model {

// Bytes free on a CUDA device (after returning the caching allocator's unused blocks to the driver);
// nothing on CPU or in builds without CUDA.
std::optional<int64_t> free_device_bytes(torch::Device device);
// The device's total memory (CUDA; nothing on CPU or in builds without CUDA).
std::optional<int64_t> total_device_bytes(torch::Device device);

}  // namespace qad::model
