// Peak memory for the metrics: the CUDA caching allocator's peak allocated bytes on a GPU, the process's
// peak resident set size on CPU.
#pragma once
#include <torch/torch.h>

namespace qad::train {

double peak_memory_gb(torch::Device device);
void reset_peak_memory(torch::Device device);  // no-op on CPU (the RSS peak cannot be reset)

}  // namespace qad::train
