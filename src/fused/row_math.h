// Scalar steps of the fused kernels that the CPU references and the CUDA kernels share. Each is written as
// the unfused ATen op computes it on that device (its precision, its formula), so that the fused paths round
// like the op sequences they replace (docs/fused_kernels.md).
#pragma once
#include <cmath>
#include <cstdint>

#include "nvfp4/host_device.h"

namespace qad::fused {

// torch.rsqrt on float: 1 / sqrt (both correctly rounded) on the CPU, CUDA's rsqrtf (within 2 ulp) on the GPU.
QAD_HD float rsqrt_like_aten(float v) {
#if defined(__CUDA_ARCH__)
  return rsqrtf(v);
#else
  return 1.0f / std::sqrt(v);
#endif
}

// torch.mean over n floats from their sum: the CPU divides the sum by n, CUDA multiplies by RN(1/n).
QAD_HD float mean_like_aten(float sum, int64_t n) {
#if defined(__CUDA_ARCH__)
  return sum * (1.0f / static_cast<float>(n));
#else
  return sum / static_cast<float>(n);
#endif
}

// LlamaRMSNorm's rstd: rsqrt(mean(h^2) + eps) with eps added in float32 (a Python float meets a float tensor).
QAD_HD float rms_rstd(float sum_of_squares, int64_t n, float eps) {
  return rsqrt_like_aten(mean_like_aten(sum_of_squares, n) + eps);
}

// torch.nn.functional.silu in float (ATen's opmath for every float dtype): x / (1 + exp(-x)).
QAD_HD float silu(float x) { return x / (1.0f + expf(-x)); }

// ATen's silu_backward: dy * sigmoid(x) * (1 + x * (1 - sigmoid(x))), sigmoid as 1 / (1 + exp(-x)).
QAD_HD float silu_backward(float dy, float x) {
  const float s = 1.0f / (1.0f + expf(-x));
  return dy * s * (1.0f + x * (1.0f - s));
}

}  // namespace qad::fused
