// Peak memory for the metrics: the CUDA caching allocator's peak allocated bytes on a GPU, the process's
// peak resident set size on CPU.
#pragma once
#include <torch/torch.h>

namespace qad::train {

double peak_memory_gb(torch::Device device);
void reset_peak_memory(torch::Device device);  // no-op on CPU (the RSS peak cannot be reset)
// Returns the CUDA caching allocator's unused blocks to the driver (so that another process can have the memory).
void release_cached_memory(torch::Device device);

}  // namespace qad::train
