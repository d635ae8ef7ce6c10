// Argument checks of the fused ops (see checks.h).
#include "fused/checks.h"

#include "util/error.h"

namespace qad::fused::detail {

torch::Tensor dense(const torch::Tensor& t) {
  if (!t.defined()) return t;
  const bool aligned = (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15u) == 0;
  if (t.is_contiguous() && aligned) return t;
  return t.clone(torch::MemoryFormat::Contiguous);  // a fresh allocation is aligned
}

void check_float(const torch::Tensor& t, const char* op, const char* name) {
  QAD_CHECK(t.defined(), "fused::{}: {} is undefined", op, name);
  const auto dt = t.scalar_type();
  QAD_CHECK(dt == torch::kFloat32 || dt == torch::kFloat16 || dt == torch::kBFloat16,
            "fused::{}: {} must be float32, float16 or bfloat16, got {}", op, name, c10::toString(dt));
}

void check_like(const torch::Tensor& t, const torch::Tensor& x, const char* op, const char* name) {
  check_float(t, op, name);
  QAD_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(),
            "fused::{}: {} is {} on {} but the input is {} on {}", op, name, c10::toString(t.scalar_type()),
            t.device().str(), c10::toString(x.scalar_type()), x.device().str());
}

void check_shape(const torch::Tensor& t, torch::IntArrayRef shape, const char* op, const char* name) {
  QAD_CHECK(t.sizes() == shape, "fused::{}: {} has shape {}, expected {}", op, name, c10::str(t.sizes()),
            c10::str(shape));
}

void check_quant(const OutputQuant& q, const torch::Tensor& x, const char* op) {
  if (!q.enabled()) return;
  QAD_CHECK(q.amax.numel() == 1 && q.amax.scalar_type() == torch::kFloat32 && q.amax.device() == x.device(),
            "fused::{}: the quantizer's amax must be one float32 on {}, got {} elements of {} on {}", op,
            x.device().str(), q.amax.numel(), c10::toString(q.amax.scalar_type()), q.amax.device().str());
}

void check_out(const torch::Tensor& t, torch::IntArrayRef shape, torch::ScalarType dtype, const torch::Device& device,
               const char* op, const char* name) {
  QAD_CHECK(t.defined() && t.sizes() == shape && t.scalar_type() == dtype && t.device() == device && t.is_contiguous(),
            "fused::{}: output {} must be a contiguous {} tensor of shape {} on {}", op, name, c10::toString(dtype),
            c10::str(shape), device.str());
}

bool use_cuda(const torch::Tensor& x, const char* op) {
  if (x.is_cpu()) return false;
  QAD_CHECK(x.is_cuda(), "fused::{}: unsupported device {}", op, x.device().str());
#ifdef QAD_HAS_CUDA
  return true;
#else
  fail("fused::{}: this qad build has no CUDA kernels; rebuild on a machine with CUDA and a CUDA LibTorch", op);
#endif
}

}  // namespace qad::fused::detail

namespace qad::fused::detail {

void check_aligned(const torch::Tensor& t, const char* op, const char* name) {
  if (!t.defined()) return;
  QAD_CHECK((reinterpret_cast<uintptr_t>(t.data_ptr()) & 15u) == 0,
            "fused::{}: output {} must start on a 16-byte boundary for the CUDA kernel", op, name);
}

OutputQuant scalar_quant(const OutputQuant& q) {
  return {q.enabled() ? q.amax.reshape({}) : torch::Tensor(), q.clipped};
}

}  // namespace qad::fused::detail
