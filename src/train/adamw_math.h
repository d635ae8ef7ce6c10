// One AdamW element update, shared by the CPU reference (fused_adamw.cc) and the CUDA kernel
// (fused_adamw_cuda.cu) so that both give identical bits: every operation is one IEEE float32 operation in a
// fixed order (the device side uses the _rn intrinsics, which the compiler cannot contract into FMAs). The order
// is that of adam_update_'s torch ops (optimizer.cc): decay, m = b1 m + (1-b1) g, v = b2 v + (1-b2) g g,
// p += -step_size * m / (sqrt(v) / sqrt(bc2) + eps).
#pragma once
#include <cmath>

#include "nvfp4/host_device.h"

namespace qad::train {

// The step's scalars, rounded to float32 once on the host (as ATen rounds double scalars for float tensors).
struct AdamWScalars {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float neg_step_size;  // -lr / (1 - beta1^t)
  float bc2_sqrt;       // sqrt(1 - beta2^t)
  float eps;
  float decay_factor;   // 1 - lr * weight_decay (applied to tensors that decay)
};

namespace adamw_detail {
#if defined(__CUDA_ARCH__)
QAD_HD float mul(float a, float b) { return __fmul_rn(a, b); }
QAD_HD float add(float a, float b) { return __fadd_rn(a, b); }
QAD_HD float div(float a, float b) { return __fdiv_rn(a, b); }
QAD_HD float root(float a) { return __fsqrt_rn(a); }
#else
QAD_HD float mul(float a, float b) { return a * b; }
QAD_HD float add(float a, float b) { return a + b; }
QAD_HD float div(float a, float b) { return a / b; }
QAD_HD float root(float a) { return std::sqrt(a); }
#endif
}  // namespace adamw_detail

// g: the gradient in float32, already multiplied by the clipping factor.
QAD_HD void adamw_element(float& p, float& m, float& v, float g, const AdamWScalars& s, bool decay) {
  using namespace adamw_detail;
  if (decay) p = mul(p, s.decay_factor);
  m = add(mul(m, s.beta1), mul(s.one_minus_beta1, g));
  v = add(mul(v, s.beta2), mul(mul(s.one_minus_beta2, g), g));
  const float denom = add(div(root(v), s.bc2_sqrt), s.eps);
  p = add(p, mul(s.neg_step_size, div(m, denom)));
}

}  // namespace qad::train
