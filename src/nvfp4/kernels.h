// Backend entry points behind quantize.h. Arguments are already checked by quantize.cc: inputs are
// contiguous, viewed as `rows` x `k`; outputs are allocated with the right shapes and devices.
#pragma once
#include <torch/torch.h>

namespace qad::nvfp4::kernels {

void amax_cpu(const torch::Tensor& x, torch::Tensor& out);
void fake_quantize_cpu(const torch::Tensor& x, const torch::Tensor& amax, torch::Tensor& y);
void quantize_cpu(const torch::Tensor& x, const torch::Tensor& amax, torch::Tensor& packed,
                  torch::Tensor& scales, torch::Tensor& global_scale);
void dequantize_cpu(const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& global_scale,
                    int64_t k, torch::Tensor& y);

#ifdef QAD_HAS_CUDA
void amax_cuda(const torch::Tensor& x, torch::Tensor& out);
void fake_quantize_cuda(const torch::Tensor& x, const torch::Tensor& amax, torch::Tensor& y);
void quantize_cuda(const torch::Tensor& x, const torch::Tensor& amax, torch::Tensor& packed,
                   torch::Tensor& scales, torch::Tensor& global_scale);
void dequantize_cuda(const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& global_scale,
                     int64_t k, torch::Tensor& y);
#endif

}  // namespace qad::nvfp4::kernels
