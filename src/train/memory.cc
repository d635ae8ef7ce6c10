// Peak memory (see memory.h). CUDA statistics only where LibTorch was built with CUDA.
#include "train/memory.h"

#include <sys/resource.h>

// QAD_HAS_CUDA comes from qad_nvfp4 (a CUDA LibTorch); Debian's CPU LibTorch ships the c10/cuda headers without
// the CUDA runtime headers, so __has_include cannot decide this.
#ifdef QAD_HAS_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#define QAD_TRAIN_HAS_CUDA_STATS 1
#endif

namespace qad::train {

double peak_memory_gb(torch::Device device) {
#ifdef QAD_TRAIN_HAS_CUDA_STATS
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    return static_cast<double>(stats.allocated_bytes[0].peak) / 1e9;  // [0] = StatType::AGGREGATE
  }
#endif
  (void)device;
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) * 1024.0 / 1e9;  // Linux: kilobytes
}

void reset_peak_memory(torch::Device device) {
#ifdef QAD_TRAIN_HAS_CUDA_STATS
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
#endif
  (void)device;
}

void release_cached_memory(torch::Device device) {
#ifdef QAD_TRAIN_HAS_CUDA_STATS
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  (void)device;
}

}  // namespace qad::train
