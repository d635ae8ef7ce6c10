// NVFP4 on tensors: amax, quantize to packed E2M1 + E4M3 block scales + FP32 global scale, dequantize,
// and fused fake quantization. Blocks are 16 consecutive elements of the last dimension K; a K that is
// not a multiple of 16 ends each row with a partial block. CPU and CUDA give identical bits.
#pragma once
#include <torch/torch.h>

#include <optional>

namespace qad::nvfp4 {

struct QuantizedTensor {
  torch::Tensor packed;        // uint8 [..., ceil(K/2)]: element 2i in the low nibble, 2i+1 in the high
  torch::Tensor block_scales;  // uint8 [..., ceil(K/16)]: E4M3 bit patterns, row-major
  torch::Tensor global_scale;  // float32 scalar: s_g = amax / 2688 (the checkpoint's weight_scale_2)
  int64_t k = 0;               // the original last dimension
};

// max |x| over the whole tensor as a float32 scalar on x's device; NaN if any element is NaN.
torch::Tensor compute_amax(const torch::Tensor& x);

// Quantizes x (float32, float16 or bfloat16) with the given global amax (a float32 scalar tensor on x's
// device), or with x's own amax when none is given. Throws qad::Error if x's own amax is not finite.
QuantizedTensor quantize(const torch::Tensor& x, const std::optional<torch::Tensor>& global_amax = {});

// Decodes back to `dtype` (the exact values; FP32 products, then one rounding to dtype).
torch::Tensor dequantize(const QuantizedTensor& q, torch::ScalarType dtype = torch::kFloat32);

// dequantize(quantize(x, amax)) in one pass, in x's dtype. A block holding NaN or ±Inf comes out all NaN
// (so a training run's non-finite check fires); see docs/nvfp4.md.
torch::Tensor fake_quantize(const torch::Tensor& x, const torch::Tensor& global_amax);

// The same, writing into a preallocated `out` (same shape, dtype and device as x; contiguous).
void fake_quantize_out(const torch::Tensor& x, const torch::Tensor& global_amax, torch::Tensor& out);
void quantize_out(const torch::Tensor& x, const torch::Tensor& global_amax, QuantizedTensor& out);
void dequantize_out(const QuantizedTensor& q, torch::Tensor& out);

// The same fake quantization written with LibTorch tensor ops only: the baseline the benchmark
// compares the fused kernel against, and an independent third implementation for the tests.
torch::Tensor fake_quantize_torch_ops(const torch::Tensor& x, const torch::Tensor& global_amax);

// Shapes of the packed outputs for an input shape.
std::vector<int64_t> packed_shape(torch::IntArrayRef shape);
std::vector<int64_t> block_scales_shape(torch::IntArrayRef shape);

// True when this build has the CUDA kernels.
bool has_cuda_kernels();

}  // namespace qad::nvfp4
