// Argument checks and CPU/CUDA dispatch of the fused rotary embedding (see rope.h).
#include "fused/rope.h"

#include "fused/checks.h"
#include "fused/kernels.h"
#include "util/error.h"

namespace qad::fused {
namespace {

using namespace detail;
constexpr const char* kOp = "rope";

struct Inputs {
  torch::Tensor x, weight, cos, sin;
};

Inputs check_inputs(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& cos,
                    const torch::Tensor& sin) {
  check_float(x, kOp, "the input");
  QAD_CHECK(x.dim() == 4 && x.size(3) > 0 && x.size(3) % 2 == 0,
            "fused::rope: the input must be [B, T, H, D] with an even D, got {}", c10::str(x.sizes()));
  const int64_t b = x.size(0), t = x.size(1), d = x.size(3);
  if (weight.defined()) {
    check_like(weight, x, kOp, "the norm weight");
    check_shape(weight, {d}, kOp, "the norm weight");
  }
  check_like(cos, x, kOp, "cos");
  check_like(sin, x, kOp, "sin");
  check_shape(cos, {b, t, d}, kOp, "cos");
  check_shape(sin, {b, t, d}, kOp, "sin");
  if (x.is_cuda()) {
    QAD_CHECK(rope_cuda_supports(x), "fused::rope: the CUDA kernel needs head_dim / 2 to be a power-of-two number "
              "(at most 32) of 16-byte vectors, got head_dim {} in {}", d, c10::toString(x.scalar_type()));
  }
  return {dense(x), dense(weight), dense(cos), dense(sin)};
}

}  // namespace

bool rope_cuda_supports(const torch::Tensor& x) {
  if (!x.defined() || x.dim() != 4) return false;
  const auto dt = x.scalar_type();
  if (dt != torch::kFloat32 && dt != torch::kFloat16 && dt != torch::kBFloat16) return false;
  const int64_t per = 16 / static_cast<int64_t>(x.element_size()), half = x.size(3) / 2;
  if (x.size(3) % 2 != 0 || half % per != 0) return false;
  const int64_t lanes = half / per;
  return lanes >= 1 && lanes <= 32 && (lanes & (lanes - 1)) == 0;
}

void rope_forward_out(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps, const torch::Tensor& cos,
                      const torch::Tensor& sin, RopeForward& out) {
  auto in = check_inputs(x, norm_weight, cos, sin);
  const int64_t b = x.size(0), t = x.size(1), h = x.size(2), d = x.size(3);
  check_out(out.out, {b, h, t, d}, x.scalar_type(), x.device(), kOp, "out");
  if (norm_weight.defined()) check_out(out.rstd, {b, t, h}, torch::kFloat32, x.device(), kOp, "rstd");
  if (use_cuda(x, kOp)) {
    check_aligned(out.out, kOp, "out");
#ifdef QAD_HAS_CUDA
    kernels::rope_forward_cuda(in.x, in.weight, static_cast<float>(eps), in.cos, in.sin, out.out, out.rstd);
#endif
    return;
  }
  kernels::rope_forward_cpu(in.x, in.weight, static_cast<float>(eps), in.cos, in.sin, out.out, out.rstd);
}

RopeForward rope_forward(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps, const torch::Tensor& cos,
                         const torch::Tensor& sin) {
  check_float(x, kOp, "the input");
  QAD_CHECK(x.dim() == 4, "fused::rope: the input must be [B, T, H, D], got {}", c10::str(x.sizes()));
  RopeForward out;
  out.out = torch::empty({x.size(0), x.size(2), x.size(1), x.size(3)}, x.options());
  if (norm_weight.defined()) out.rstd = torch::empty({x.size(0), x.size(1), x.size(2)}, x.options().dtype(torch::kFloat32));
  rope_forward_out(x, norm_weight, eps, cos, sin, out);
  return out;
}

void rope_backward_out(const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& norm_weight,
                       const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& rstd, RopeGrads& out) {
  auto in = check_inputs(x, norm_weight, cos, sin);
  const int64_t b = x.size(0), t = x.size(1), h = x.size(2), d = x.size(3);
  check_like(grad_out, x, kOp, "grad_out");
  check_shape(grad_out, {b, h, t, d}, kOp, "grad_out");
  if (norm_weight.defined()) {
    QAD_CHECK(rstd.defined() && rstd.scalar_type() == torch::kFloat32 && rstd.numel() == b * t * h &&
                  rstd.device() == x.device(),
              "fused::rope: rstd must be {} float32 values on {} (the forward's)", b * t * h, x.device().str());
  }
  check_out(out.input, x.sizes(), x.scalar_type(), x.device(), kOp, "input gradient");
  if (out.weight.defined()) {
    QAD_CHECK(norm_weight.defined(), "fused::rope: a weight gradient was asked for without a norm weight");
    check_out(out.weight, {d}, torch::kFloat32, x.device(), kOp, "weight gradient");
  }
  auto go = dense(grad_out);
  auto r = rstd.defined() ? rstd.contiguous() : rstd;
  if (use_cuda(x, kOp)) {
    check_aligned(out.input, kOp, "input gradient");
#ifdef QAD_HAS_CUDA
    kernels::rope_backward_cuda(go, in.x, in.weight, in.cos, in.sin, r, out.input, out.weight);
#endif
    return;
  }
  kernels::rope_backward_cpu(go, in.x, in.weight, in.cos, in.sin, r, out.input, out.weight);
}

RopeGrads rope_backward(const torch::Tensor& grad_out, const torch::Tensor& x, const torch::Tensor& norm_weight,
                        const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& rstd, bool weight_grad) {
  check_float(x, kOp, "the input");
  RopeGrads out;
  out.input = torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::Contiguous));
  if (weight_grad && norm_weight.defined()) out.weight = torch::empty({x.size(-1)}, x.options().dtype(torch::kFloat32));
  rope_backward_out(grad_out, x, norm_weight, cos, sin, rstd, out);
  return out;
}

}  // namespace qad::fused
