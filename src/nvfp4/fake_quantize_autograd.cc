#include "nvfp4/fake_quantize_autograd.h"

#include "nvfp4/quantize.h"

namespace qad::nvfp4 {
namespace {

struct FakeQuantizeFunction : public torch::autograd::Function<FakeQuantizeFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& global_amax, bool clipped) {
    ctx->saved_data["clipped"] = clipped;
    if (clipped) ctx->save_for_backward({x, global_amax});
    return fake_quantize(x, global_amax.detach());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    torch::Tensor grad = grad_outputs[0];
    if (ctx->saved_data["clipped"].toBool()) {
      auto saved = ctx->get_saved_variables();
      auto inside = saved[0].abs().to(torch::kFloat32) <= saved[1];
      grad = grad * inside.to(grad.scalar_type());
    }
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fake_quantize_ste(const torch::Tensor& x, const torch::Tensor& global_amax, StraightThrough mode) {
  return FakeQuantizeFunction::apply(x, global_amax, mode == StraightThrough::kClipped);
}

}  // namespace qad::nvfp4
