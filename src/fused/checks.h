// Argument checks shared by the fused ops' dispatch files: one-line errors naming the op, the tensor and what
// was expected. Internal to src/fused.
#pragma once
#include <torch/torch.h>

#include "fused/output_quant.h"

namespace qad::fused::detail {

// A contiguous tensor whose data is 16-byte aligned (what the CUDA kernels' vector loads need): `t` itself when
// it is, else a copy.
torch::Tensor dense(const torch::Tensor& t);

// float32 / float16 / bfloat16, defined, on x's device and of x's dtype (for every tensor but x itself).
void check_float(const torch::Tensor& t, const char* op, const char* name);
void check_like(const torch::Tensor& t, const torch::Tensor& x, const char* op, const char* name);
void check_shape(const torch::Tensor& t, torch::IntArrayRef shape, const char* op, const char* name);
void check_quant(const OutputQuant& q, const torch::Tensor& x, const char* op);
// Outputs: defined, contiguous, the given shape, dtype and device.
void check_out(const torch::Tensor& t, torch::IntArrayRef shape, torch::ScalarType dtype, const torch::Device& device,
               const char* op, const char* name);

// True on CUDA (throws when this build has no CUDA kernels), false on the CPU; other devices throw.
bool use_cuda(const torch::Tensor& x, const char* op);

}  // namespace qad::fused::detail

namespace qad::fused::detail {
// The CUDA kernels write 16-byte vectors: outputs must start on a 16-byte boundary.
void check_aligned(const torch::Tensor& t, const char* op, const char* name);
// A one-element quantizer amax as a scalar (the kernels read one float).
OutputQuant scalar_quant(const OutputQuant& q);
}  // namespace qad::fused::detail
