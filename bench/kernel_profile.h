// Per-kernel GPU time of a piece of work (one training step, in bench_train --profile), from the Kineto profiler
// that LibTorch >= 2 ships: every CUDA activity (kernel, memcpy, memset) grouped by name, top N by total time.
#pragma once
#include <functional>
#include <string>

namespace qad::bench {

// True where this LibTorch has the Kineto C++ API (2.0 and later).
bool kernel_profiler_available();

// Runs `work` under the profiler and returns a table: total GPU time, then the top `top` kernels by total time
// (calls, total ms, share of GPU time, mean us, name). Throws where the profiler is not available.
std::string profile_kernels(const std::function<void()>& work, int top = 30);

}  // namespace qad::bench
