// Autograd functions over the fused ops (see autograd.h).
#include "fused/autograd.h"

#include "fused/rms_norm.h"
#include "fused/rope.h"
#include "fused/swiglu.h"

namespace qad::fused {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save_quant(AutogradContext* ctx, const OutputQuant& q) {
  ctx->saved_data["quant"] = q.enabled();
  ctx->saved_data["clipped"] = q.clipped;
  if (q.enabled()) ctx->saved_data["amax"] = q.amax;
}

OutputQuant load_quant(AutogradContext* ctx) {
  OutputQuant q;
  if (ctx->saved_data["quant"].toBool()) q.amax = ctx->saved_data["amax"].toTensor();
  q.clipped = ctx->saved_data["clipped"].toBool();
  return q;
}

torch::Tensor cast_or_none(const torch::Tensor& grad, const torch::Tensor& like) {
  return grad.defined() ? grad.to(like.scalar_type()) : torch::Tensor();
}

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps,
                               const OutputQuant& quant) {
    auto f = rms_norm_forward(x, torch::Tensor(), weight, eps, quant);
    ctx->save_for_backward({x, weight, f.rstd});
    save_quant(ctx, quant);
    return f.y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto g = rms_norm_backward(grads[0], torch::Tensor(), s[0], s[1], s[2], load_quant(ctx), ctx->needs_input_grad(1));
    return {g.input, cast_or_none(g.weight, s[1]), torch::Tensor(), torch::Tensor()};
  }
};

struct AddRmsNormFunction : torch::autograd::Function<AddRmsNormFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& residual,
                               const torch::Tensor& weight, double eps, const OutputQuant& quant) {
    auto f = rms_norm_forward(x, residual, weight, eps, quant);
    ctx->save_for_backward({f.residual, weight, f.rstd});
    save_quant(ctx, quant);
    return {f.residual, f.y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    // grads[0] reaches h from the residual stream, grads[1] through the norm; either may be absent.
    auto grad_y = grads[1].defined() ? grads[1] : torch::zeros_like(s[0]);
    auto g = rms_norm_backward(grad_y, grads[0], s[0], s[1], s[2], load_quant(ctx), ctx->needs_input_grad(2));
    return {g.input, g.input, cast_or_none(g.weight, s[1]), torch::Tensor(), torch::Tensor()};
  }
};

struct SwigluFunction : torch::autograd::Function<SwigluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up,
                               const OutputQuant& quant) {
    ctx->save_for_backward({gate, up});
    save_quant(ctx, quant);
    return swiglu_forward(gate, up, quant);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto [gg, gu] = swiglu_backward(grads[0], s[0], s[1], load_quant(ctx));
    return {gg, gu, torch::Tensor()};
  }
};

struct RopeFunction : torch::autograd::Function<RopeFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const c10::optional<torch::Tensor>& weight,
                               double eps, const torch::Tensor& cos, const torch::Tensor& sin) {
    const torch::Tensor w = weight.has_value() ? *weight : torch::Tensor();
    auto f = rope_forward(x, w, eps, cos, sin);
    ctx->saved_data["norm"] = w.defined();
    // cos and sin never need gradients; they are saved as data so that autograd does not track them.
    ctx->saved_data["cos"] = cos;
    ctx->saved_data["sin"] = sin;
    if (w.defined()) {
      ctx->save_for_backward({x, w, f.rstd});
    } else {
      ctx->save_for_backward({x});
    }
    return f.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const bool norm = ctx->saved_data["norm"].toBool();
    const torch::Tensor w = norm ? s[1] : torch::Tensor(), rstd = norm ? s[2] : torch::Tensor();
    auto g = rope_backward(grads[0], s[0], w, ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor(),
                           rstd, norm && ctx->needs_input_grad(1));
    return {g.input, norm ? cast_or_none(g.weight, w) : torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps, const OutputQuant& quant) {
  return RmsNormFunction::apply(x, weight, eps, quant);
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                                     const torch::Tensor& weight, double eps, const OutputQuant& quant) {
  auto out = AddRmsNormFunction::apply(x, residual, weight, eps, quant);
  return {out[0], out[1]};
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& quant) {
  return SwigluFunction::apply(gate, up, quant);
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps, const torch::Tensor& cos,
                   const torch::Tensor& sin) {
  c10::optional<torch::Tensor> w;
  if (norm_weight.defined()) w = norm_weight;
  return RopeFunction::apply(x, w, eps, cos, sin);
}

}  // namespace qad::fused
