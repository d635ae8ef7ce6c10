// E4M3 rounding and the FP8 KV-cache fake quantization as LibTorch tensor ops (see fp8.h).
#include "nvfp4/fp8.h"

#include "nvfp4/e4m3.h"
#include "util/error.h"

namespace qad::nvfp4 {
namespace {

// 2^e as float32, exactly, for e in the normal range (pow/ldexp may go through exp2 on some devices).
torch::Tensor exact_power_of_two(const torch::Tensor& e) {
  return ((e.to(torch::kInt32) + 127) * (1 << 23)).view(torch::kFloat32);
}

}  // namespace

torch::Tensor e4m3_round(const torch::Tensor& x) {
  QAD_CHECK(x.scalar_type() == torch::kFloat32, "e4m3_round takes float32, got {}", c10::toString(x.scalar_type()));
  auto a = x.abs().clamp_max(kE4M3Max);                   // saturate (±Inf too); NaN passes through clamp
  auto subnormal = torch::round(a * 512.0) * 0.001953125;  // below 2^-6: steps of 2^-9 (round: ties to even)
  auto fr = torch::frexp(a);                                // a = m * 2^e, m in [0.5, 1)
  auto m = std::get<0>(fr);
  auto e = std::get<1>(fr);
  auto normal = torch::round(m * 16.0) * exact_power_of_two(e - 4);  // 3 mantissa bits: steps of 2^(e-4)
  auto magnitude = torch::where(a < kE4M3MinNormal, subnormal, normal);
  return torch::copysign(magnitude, x);  // NaN stays NaN (its magnitude is NaN), -0 stays -0
}

torch::Tensor fp8_fake_quantize(const torch::Tensor& x, const torch::Tensor& scale) {
  QAD_CHECK(x.is_floating_point(), "fp8_fake_quantize takes a floating-point tensor, got {}",
            c10::toString(x.scalar_type()));
  QAD_CHECK(scale.numel() == 1, "fp8_fake_quantize: the scale must be one number, got {} elements", scale.numel());
  // Divide by a tensor, not a host scalar: LibTorch's CUDA division by a scalar multiplies by its reciprocal,
  // which rounds differently from the division the engines do.
  auto s = scale.detach().to(x.device(), torch::kFloat32).reshape({});
  auto q = e4m3_round(x.to(torch::kFloat32) / s) * s;
  return q.to(x.scalar_type());
}

namespace {

struct Fp8FakeQuantizeFunction : public torch::autograd::Function<Fp8FakeQuantizeFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& scale,
                               bool clipped) {
    ctx->saved_data["clipped"] = clipped;
    if (clipped) ctx->save_for_backward({x, scale});
    return fp8_fake_quantize(x, scale);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    torch::Tensor grad = grad_outputs[0];
    if (ctx->saved_data["clipped"].toBool()) {
      auto saved = ctx->get_saved_variables();
      auto s = saved[1].to(saved[0].device(), torch::kFloat32).reshape({});
      auto inside = (saved[0].to(torch::kFloat32) / s).abs() <= kE4M3Max;
      grad = grad * inside.to(grad.scalar_type());
    }
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fp8_fake_quantize_ste(const torch::Tensor& x, const torch::Tensor& scale, StraightThrough mode) {
  return Fp8FakeQuantizeFunction::apply(x, scale.detach(), mode == StraightThrough::kClipped);
}

}  // namespace qad::nvfp4
