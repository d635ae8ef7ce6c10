// Argument checks and CPU/CUDA dispatch of the fused RMSNorm (see rms_norm.h).
#include "fused/rms_norm.h"

#include "fused/checks.h"
#include "fused/kernels.h"
#include "util/error.h"

namespace qad::fused {
namespace {

using namespace detail;
constexpr const char* kOp = "rms_norm";

// x, weight and residual, checked and made dense.
struct Inputs {
  torch::Tensor x, residual, weight;
  int64_t k, rows;
};

Inputs check_inputs(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& weight,
                    const OutputQuant& quant) {
  check_float(x, kOp, "the input");
  QAD_CHECK(x.dim() >= 1 && x.size(-1) > 0, "fused::rms_norm: the input needs a non-empty last dimension, got {}",
            c10::str(x.sizes()));
  const int64_t k = x.size(-1);
  check_like(weight, x, kOp, "weight");
  check_shape(weight, {k}, kOp, "weight");
  if (residual.defined()) {
    check_like(residual, x, kOp, "residual");
    check_shape(residual, x.sizes(), kOp, "residual");
  }
  check_quant(quant, x, kOp);
  if (x.is_cuda()) {
    QAD_CHECK(rms_norm_cuda_supports(x), "fused::rms_norm: the CUDA kernel needs a last dimension that is a multiple "
              "of 16 and at most 2048 16-byte vectors, got {}", k);
  }
  return {dense(x), dense(residual), dense(weight), k, x.numel() / k};
}

}  // namespace

bool rms_norm_cuda_supports(const torch::Tensor& x) {
  if (!x.defined() || x.dim() < 1) return false;
  const auto dt = x.scalar_type();
  if (dt != torch::kFloat32 && dt != torch::kFloat16 && dt != torch::kBFloat16) return false;
  const int64_t k = x.size(-1);
  return k > 0 && k % 16 == 0 && k / (16 / static_cast<int64_t>(x.element_size())) <= 4 * 512;
}

void rms_norm_forward_out(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& weight,
                          double eps, const OutputQuant& quant, RmsNormForward& out) {
  auto in = check_inputs(x, residual, weight, quant);
  check_out(out.y, x.sizes(), x.scalar_type(), x.device(), kOp, "y");
  check_out(out.rstd, {in.rows}, torch::kFloat32, x.device(), kOp, "rstd");
  if (residual.defined()) check_out(out.residual, x.sizes(), x.scalar_type(), x.device(), kOp, "residual");
  const auto q = scalar_quant(quant);
  if (use_cuda(x, kOp)) {
    check_aligned(out.y, kOp, "y");
    check_aligned(out.residual, kOp, "residual");
#ifdef QAD_HAS_CUDA
    kernels::rms_norm_forward_cuda(in.x, in.residual, in.weight, static_cast<float>(eps), q, out.y, out.rstd,
                                   out.residual);
#endif
    return;
  }
  kernels::rms_norm_forward_cpu(in.x, in.residual, in.weight, static_cast<float>(eps), q, out.y, out.rstd, out.residual);
}

RmsNormForward rms_norm_forward(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& weight,
                                double eps, const OutputQuant& quant) {
  check_float(x, kOp, "the input");
  RmsNormForward out;
  out.y = torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::Contiguous));
  out.rstd = torch::empty({x.numel() / std::max<int64_t>(1, x.size(-1))}, x.options().dtype(torch::kFloat32));
  if (residual.defined()) out.residual = torch::empty_like(out.y);
  rms_norm_forward_out(x, residual, weight, eps, quant, out);
  return out;
}

void rms_norm_backward_out(const torch::Tensor& grad_y, const torch::Tensor& grad_h, const torch::Tensor& h,
                           const torch::Tensor& weight, const torch::Tensor& rstd, const OutputQuant& quant,
                           RmsNormGrads& out) {
  auto in = check_inputs(h, torch::Tensor(), weight, quant);
  check_like(grad_y, h, kOp, "grad_y");
  check_shape(grad_y, h.sizes(), kOp, "grad_y");
  if (grad_h.defined()) {
    check_like(grad_h, h, kOp, "grad_h");
    check_shape(grad_h, h.sizes(), kOp, "grad_h");
  }
  QAD_CHECK(rstd.defined() && rstd.scalar_type() == torch::kFloat32 && rstd.numel() == in.rows &&
                rstd.device() == h.device(),
            "fused::rms_norm: rstd must be {} float32 values on {} (the forward's)", in.rows, h.device().str());
  check_out(out.input, h.sizes(), h.scalar_type(), h.device(), kOp, "input gradient");
  if (out.weight.defined()) check_out(out.weight, {in.k}, torch::kFloat32, h.device(), kOp, "weight gradient");
  const auto q = scalar_quant(quant);
  auto gy = dense(grad_y), gh = dense(grad_h), r = rstd.contiguous();
  if (use_cuda(h, kOp)) {
    check_aligned(out.input, kOp, "input gradient");
#ifdef QAD_HAS_CUDA
    kernels::rms_norm_backward_cuda(gy, gh, in.x, in.weight, r, q, out.input, out.weight);
#endif
    return;
  }
  kernels::rms_norm_backward_cpu(gy, gh, in.x, in.weight, r, q, out.input, out.weight);
}

RmsNormGrads rms_norm_backward(const torch::Tensor& grad_y, const torch::Tensor& grad_h, const torch::Tensor& h,
                               const torch::Tensor& weight, const torch::Tensor& rstd, const OutputQuant& quant,
                               bool weight_grad) {
  check_float(h, kOp, "h");
  RmsNormGrads out;
  out.input = torch::empty(h.sizes(), h.options().memory_format(torch::MemoryFormat::Contiguous));
  if (weight_grad) out.weight = torch::empty({h.size(-1)}, h.options().dtype(torch::kFloat32));
  rms_norm_backward_out(grad_y, grad_h, h, weight, rstd, quant, out);
  return out;
}

}  // namespace qad::fused
