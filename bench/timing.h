// Median time of a piece of work in milliseconds: on a GPU between CUDA events on the current stream (the device's
// time for the work queued there), on a CPU by the steady clock.
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include <torch/cuda.h>

#ifdef QAD_HAS_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace qad::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median over `iters` runs of fn after `warmup` runs.
inline double time_ms(const std::function<void()>& fn, bool cuda, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
#ifdef QAD_HAS_CUDA
  if (cuda) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    for (int i = 0; i < iters; ++i) {
      at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
      start.record(stream);
      fn();
      stop.record(stream);
      stop.synchronize();
      ms.push_back(start.elapsed_time(stop));
    }
    return median(ms);
  }
#endif
  // A build without qad's CUDA kernels may still run LibTorch on a GPU: then the clock waits for the device.
  auto sync = [cuda] {
    if (cuda) torch::cuda::synchronize();
  };
  sync();
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    sync();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(ms);
}

}  // namespace qad::bench
