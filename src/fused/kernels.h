// Backend entry points behind rms_norm.h, swiglu.h and rope.h. Arguments are already checked by the op files:
// inputs are contiguous with the documented shapes and one dtype; outputs are allocated (and may hold garbage).
// The *_cpu functions are the plain references; the *_cuda kernels must match them (docs/fused_kernels.md).
#pragma once
#include <torch/torch.h>

#include "fused/output_quant.h"

namespace qad::fused::kernels {

// x, residual (undefined: none), y, h_out (written only with a residual): [rows, k]; w [k]; rstd float32 [rows].
void rms_norm_forward_cpu(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& w, float eps,
                          const OutputQuant& q, torch::Tensor& y, torch::Tensor& rstd, torch::Tensor& h_out);
// grad_h (undefined: none) is added to the input gradient; grad_w (float32 [k]) is skipped when undefined.
void rms_norm_backward_cpu(const torch::Tensor& grad_y, const torch::Tensor& grad_h, const torch::Tensor& h,
                           const torch::Tensor& w, const torch::Tensor& rstd, const OutputQuant& q,
                           torch::Tensor& grad_x, torch::Tensor& grad_w);

// gate, up, y, grad_*: [rows, k].
void swiglu_forward_cpu(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& q, torch::Tensor& y);
void swiglu_backward_cpu(const torch::Tensor& grad_y, const torch::Tensor& gate, const torch::Tensor& up,
                         const OutputQuant& q, torch::Tensor& grad_gate, torch::Tensor& grad_up);

// x [B, T, H, D]; w [D] or undefined (no per-head norm); cos, sin [B, T, D]; out [B, H, T, D]; rstd float32
// [B, T, H] (unused without a norm); grad_w float32 [D] or undefined.
void rope_forward_cpu(const torch::Tensor& x, const torch::Tensor& w, float eps, const torch::Tensor& cos,
                      const torch::Tensor& sin, torch::Tensor& out, torch::Tensor& rstd);
void rope_backward_cpu(const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& w,
                       const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& rstd,
                       torch::Tensor& grad_x, torch::Tensor& grad_w);

#ifdef QAD_HAS_CUDA
void rms_norm_forward_cuda(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& w, float eps,
                           const OutputQuant& q, torch::Tensor& y, torch::Tensor& rstd, torch::Tensor& h_out);
void rms_norm_backward_cuda(const torch::Tensor& grad_y, const torch::Tensor& grad_h, const torch::Tensor& h,
                            const torch::Tensor& w, const torch::Tensor& rstd, const OutputQuant& q,
                            torch::Tensor& grad_x, torch::Tensor& grad_w);
void swiglu_forward_cuda(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& q, torch::Tensor& y);
void swiglu_backward_cuda(const torch::Tensor& grad_y, const torch::Tensor& gate, const torch::Tensor& up,
                          const OutputQuant& q, torch::Tensor& grad_gate, torch::Tensor& grad_up);
void rope_forward_cuda(const torch::Tensor& x, const torch::Tensor& w, float eps, const torch::Tensor& cos,
                       const torch::Tensor& sin, torch::Tensor& out, torch::Tensor& rstd);
void rope_backward_cuda(const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& w,
                        const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& rstd,
                        torch::Tensor& grad_x, torch::Tensor& grad_w);
#endif

}  // namespace qad::fused::kernels
