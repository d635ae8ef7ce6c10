// The one place that knows LibTorch versions apart. qad builds on Debian's LibTorch 1.13 (CPU, CI) and
// on LibTorch 2.x with CUDA (the GPU machine); everything version-dependent goes through here.
#pragma once
#include <torch/torch.h>

#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

#ifndef TORCH_VERSION_MAJOR
#define TORCH_VERSION_MAJOR 1
#define TORCH_VERSION_MINOR 13
#endif

#define QAD_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace qad::compat {

// Float8 dtypes exist from LibTorch 2.1; before that FP8 bytes travel as uint8.
constexpr bool kHasFloat8 = QAD_TORCH_AT_LEAST(2, 1);

// Fused scaled-dot-product attention (flash / memory-efficient kernels) exists from LibTorch 2.0.
constexpr bool kHasSdpa = QAD_TORCH_AT_LEAST(2, 0);

inline bool cuda_available() { return torch::cuda::is_available(); }

}  // namespace qad::compat
