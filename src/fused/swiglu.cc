// Argument checks and CPU/CUDA dispatch of the fused SwiGLU (see swiglu.h).
#include "fused/swiglu.h"

#include "fused/checks.h"
#include "fused/kernels.h"
#include "util/error.h"

namespace qad::fused {
namespace {

using namespace detail;
constexpr const char* kOp = "swiglu";

void check_inputs(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& quant) {
  check_float(gate, kOp, "gate");
  QAD_CHECK(gate.dim() >= 1 && gate.size(-1) > 0, "fused::swiglu: gate needs a non-empty last dimension, got {}",
            c10::str(gate.sizes()));
  check_like(up, gate, kOp, "up");
  check_shape(up, gate.sizes(), kOp, "up");
  check_quant(quant, gate, kOp);
  if (gate.is_cuda()) {
    QAD_CHECK(swiglu_cuda_supports(gate), "fused::swiglu: the CUDA kernel needs a last dimension that is a multiple "
              "of 16, got {}", gate.size(-1));
  }
}

}  // namespace

bool swiglu_cuda_supports(const torch::Tensor& gate) {
  if (!gate.defined() || gate.dim() < 1) return false;
  const auto dt = gate.scalar_type();
  if (dt != torch::kFloat32 && dt != torch::kFloat16 && dt != torch::kBFloat16) return false;
  return gate.size(-1) > 0 && gate.size(-1) % 16 == 0;
}

void swiglu_forward_out(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& quant, torch::Tensor& y) {
  check_inputs(gate, up, quant);
  check_out(y, gate.sizes(), gate.scalar_type(), gate.device(), kOp, "y");
  auto g = dense(gate), u = dense(up);
  const auto q = scalar_quant(quant);
  if (use_cuda(gate, kOp)) {
    check_aligned(y, kOp, "y");
#ifdef QAD_HAS_CUDA
    kernels::swiglu_forward_cuda(g, u, q, y);
#endif
    return;
  }
  kernels::swiglu_forward_cpu(g, u, q, y);
}

torch::Tensor swiglu_forward(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& quant) {
  check_float(gate, kOp, "gate");
  auto y = torch::empty(gate.sizes(), gate.options().memory_format(torch::MemoryFormat::Contiguous));
  swiglu_forward_out(gate, up, quant, y);
  return y;
}

void swiglu_backward_out(const torch::Tensor& grad_y, const torch::Tensor& gate, const torch::Tensor& up,
                         const OutputQuant& quant, torch::Tensor& grad_gate, torch::Tensor& grad_up) {
  check_inputs(gate, up, quant);
  check_like(grad_y, gate, kOp, "grad_y");
  check_shape(grad_y, gate.sizes(), kOp, "grad_y");
  check_out(grad_gate, gate.sizes(), gate.scalar_type(), gate.device(), kOp, "grad_gate");
  check_out(grad_up, gate.sizes(), gate.scalar_type(), gate.device(), kOp, "grad_up");
  auto gy = dense(grad_y), g = dense(gate), u = dense(up);
  const auto q = scalar_quant(quant);
  if (use_cuda(gate, kOp)) {
    check_aligned(grad_gate, kOp, "grad_gate");
    check_aligned(grad_up, kOp, "grad_up");
#ifdef QAD_HAS_CUDA
    kernels::swiglu_backward_cuda(gy, g, u, q, grad_gate, grad_up);
#endif
    return;
  }
  kernels::swiglu_backward_cpu(gy, g, u, q, grad_gate, grad_up);
}

std::pair<torch::Tensor, torch::Tensor> swiglu_backward(const torch::Tensor& grad_y, const torch::Tensor& gate,
                                                        const torch::Tensor& up, const OutputQuant& quant) {
  check_float(gate, kOp, "gate");
  auto opts = gate.options().memory_format(torch::MemoryFormat::Contiguous);
  auto gg = torch::empty(gate.sizes(), opts), gu = torch::empty(gate.sizes(), opts);
  swiglu_backward_out(grad_y, gate, up, quant, gg, gu);
  return {gg, gu};
}

}  // namespace qad::fused
