// The NVFP4 fake-quant hook of one Linear, fused-group naming, and the amax that reproduces a stored scale.
#include "quant/linear_quant.h"

#include <fnmatch.h>

#include <cmath>
#include <fmt/format.h>

#include "nvfp4/block_scales.h"
#include "nvfp4/fp8.h"
#include "nvfp4/quantize.h"
#include "nvfp4/scales.h"
#include "util/error.h"

namespace qad::quant {

torch::Tensor NvFp4LinearQuant::on_device(torch::Tensor& t, const torch::Device& d) {
  // Hooks are not registered modules, so lm->to(device) does not move their amaxes: follow the tensor.
  if (t.device() != d) t = t.to(d);
  return t;
}

torch::Tensor NvFp4LinearQuant::input(const torch::Tensor& x) {
  if (calibrating) {
    torch::NoGradGuard no_grad;
    torch::Tensor a;
    const torch::Tensor* mask = calib_mask ? calib_mask.get() : nullptr;
    if (mask != nullptr && mask->defined() && x.dim() == 3 && x.size(0) == mask->size(0) &&
        x.size(1) == mask->size(1)) {
      // Padding rows are real computations on pad embeddings; they must not set the static scale.
      auto row_amax = x.detach().abs().amax(-1).to(torch::kFloat32);
      a = row_amax.masked_fill(mask->to(x.device()).logical_not(), 0.0f).max();
    } else {
      a = nvfp4::compute_amax(x.detach());
    }
    calib_amax = calib_amax.defined() ? torch::maximum(calib_amax, a) : a;
    return x;
  }
  if (!quantize_inputs) return x;
  QAD_CHECK(input_amax.defined(), "{}: the input quantizer is not calibrated (run quant::calibrate, or load a "
            "quantizer state, before the forward)", module_);
  if (fp8) return nvfp4::fp8_fake_quantize_ste(x, fp8_scale(on_device(input_amax, x.device())), ste);
  return nvfp4::fake_quantize_ste(x, on_device(input_amax, x.device()), ste);
}

namespace {

// The cached quantized weight travels outside autograd's inputs (a tensor argument would be one).
struct Held {
  torch::Tensor value;
};

// Forward: the cached fake-quantized weight; backward: the identity STE into the weight.
struct CachedStraightThrough : public torch::autograd::Function<CachedStraightThrough> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor&, const Held& q) {
    return q.value.detach();  // shares the cache's storage: no copy
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grad_outputs) {
    return {grad_outputs[0], torch::Tensor()};
  }
};

}  // namespace

torch::Tensor NvFp4LinearQuant::cached_weight(const torch::Tensor& w) {
  auto& c = cache_;
  const auto& amax = on_device(weight_amax, w.device());
  const torch::Tensor scales = static_block_scales ? on_device(block_scale, w.device()) : torch::Tensor();
  const void* scales_impl = scales.defined() ? scales.unsafeGetTensorImpl() : nullptr;
  const int64_t scales_version = scales.defined() ? static_cast<int64_t>(scales._version()) : -1;
  const bool fresh = c.value.defined() && c.impl == w.unsafeGetTensorImpl() && c.data == w.data_ptr() &&
                     c.version == static_cast<int64_t>(w._version()) && c.amax_impl == amax.unsafeGetTensorImpl() &&
                     c.amax_version == static_cast<int64_t>(amax._version()) && c.scales_impl == scales_impl &&
                     c.scales_version == scales_version && c.value.scalar_type() == w.scalar_type();
  if (fresh) {
    ++weight_cache_hits;
    return c.value;
  }
  ++weight_cache_misses;
  torch::NoGradGuard ng;
  c.value = fp8                ? nvfp4::fp8_fake_quantize(w.detach(), fp8_scale(amax))
            : scales.defined() ? nvfp4::fake_quantize_with_block_scales(w.detach(), scales, amax)
                               : nvfp4::fake_quantize(w.detach(), amax);
  c.impl = w.unsafeGetTensorImpl();
  c.data = w.data_ptr();
  c.version = static_cast<int64_t>(w._version());
  c.amax_impl = amax.unsafeGetTensorImpl();
  c.amax_version = static_cast<int64_t>(amax._version());
  c.scales_impl = scales_impl;
  c.scales_version = scales_version;
  return c.value;
}

std::optional<model::FusedInputQuant> NvFp4LinearQuant::fused_input(const torch::Device& device) {
  if (calibrating || (fp8 && quantize_inputs)) return std::nullopt;  // the fused kernels quantize to NVFP4 only
  if (!quantize_inputs) return model::FusedInputQuant{};
  QAD_CHECK(input_amax.defined(), "{}: the input quantizer is not calibrated (run quant::calibrate, or load a "
            "quantizer state, before the forward)", module_);
  if (!input_amax.is_same(amax_seen_) || input_amax._version() != amax_seen_version_) {
    amax_seen_value_ = input_amax.item<float>();  // a CPU tensor after calibration or loading: no device sync
  }
  on_device(input_amax, device);
  amax_seen_ = input_amax;  // the device copy holds the same value
  amax_seen_version_ = input_amax._version();
  return model::FusedInputQuant{input_amax, amax_seen_value_, ste == nvfp4::StraightThrough::kClipped};
}

torch::Tensor NvFp4LinearQuant::weight(const torch::Tensor& w) {
  if (calibrating || !quantize_weights) return w;
  QAD_CHECK(weight_amax.defined(), "{}: the weight quantizer has no amax (apply_nvfp4 sets it)", module_);
  QAD_CHECK(fp8 || !static_block_scales || block_scale.defined(), "{}: the weight's static block scales are not "
            "chosen yet (run quant::calibrate, or load a quantizer state, before the forward)", module_);
  // The clipped STE needs the weight in its backward: that path quantizes afresh.
  if (ste != nvfp4::StraightThrough::kIdentity) {
    if (fp8) return nvfp4::fp8_fake_quantize_ste(w, fp8_scale(on_device(weight_amax, w.device())), ste);
    if (static_block_scales) {
      return nvfp4::fake_quantize_with_block_scales_ste(w, on_device(block_scale, w.device()),
                                                        on_device(weight_amax, w.device()), ste);
    }
    return nvfp4::fake_quantize_ste(w, on_device(weight_amax, w.device()), ste);
  }
  auto q = cached_weight(w);
  if (!torch::GradMode::is_enabled() || !w.requires_grad()) return q.detach();
  return CachedStraightThrough::apply(w, Held{q});
}

NvFp4LinearQuant* nvfp4_hook(const model::Linear& l) {
  return dynamic_cast<NvFp4LinearQuant*>(l->quant.get());
}

std::string fused_group(const std::string& module) {
  const auto dot = module.rfind('.');
  if (dot == std::string::npos) return {};
  const std::string prefix = module.substr(0, dot), leaf = module.substr(dot + 1);
  if (leaf == "q_proj" || leaf == "k_proj" || leaf == "v_proj") return prefix + ".qkv";
  if (leaf == "gate_proj" || leaf == "up_proj") return prefix + ".gate_up";
  return {};
}

bool glob_match(const std::string& pattern, const std::string& name) {
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;  // no FNM_PATHNAME: '*' also matches '.'
}

torch::Tensor fp8_scale(const torch::Tensor& amax) {
  // A true division by a tensor (LibTorch's CUDA division by a host scalar multiplies by the reciprocal).
  auto a = amax.detach().to(torch::kFloat32).reshape({});
  return a / torch::full({}, nvfp4::kE4M3Max, a.options());
}

float amax_for_scale(float scale, const std::string& what, float denominator) {
  QAD_CHECK(std::isfinite(scale) && scale >= 0.0f, "{}: scale {} is not a finite non-negative number", what, scale);
  // A = scale * 2688 is usually exact; the division's rounding can make A / 2688 land one ulp away, so look
  // at the neighbours. Every scale written as fl(A / 2688) (ModelOpt, qad) has such an A.
  const float a0 = scale * denominator;
  float best = a0;
  float best_err = std::fabs(a0 / denominator - scale);
  float lo = a0, hi = a0;
  for (int i = 0; i < 8 && best_err != 0.0f; ++i) {
    lo = std::nextafter(lo, 0.0f);
    hi = std::nextafter(hi, INFINITY);
    for (float c : {lo, hi}) {
      const float e = std::fabs(c / denominator - scale);
      if (e < best_err) best = c, best_err = e;
    }
  }
  if (best_err != 0.0f) {
    fmt::print(stderr,
               "qad: warning: {}: scale {:.9g} is not A/{} for any float32 A; using the nearest ({:.9g}); "
               "activations may differ from the engine's in the last bit\n",
               what, scale, denominator, best / denominator);
  }
  return best;
}

}  // namespace qad::quant
