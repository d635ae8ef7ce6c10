// The fused AdamW's dispatch, argument checks and plain C++ reference (see fused_adamw.h).
#include "train/fused_adamw.h"

#include <cmath>

#include "util/error.h"

namespace qad::train {
namespace {

bool is_bf16_or_f32(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kFloat32;
}

void check_scalar(const torch::Tensor& t, const char* what, const torch::Device& d) {
  QAD_CHECK(t.defined() && t.numel() == 1 && t.scalar_type() == torch::kFloat32 && t.device() == d,
            "fused_adamw: {} must be a float32 scalar on {}", what, d.str());
}

template <typename G>
void reference_one(const AdamWTensors& t, const AdamWScalars& s, float scale) {
  float* p = t.master.data_ptr<float>();
  float* m = t.exp_avg.data_ptr<float>();
  float* v = t.exp_avg_sq.data_ptr<float>();
  const G* g = t.grad.data_ptr<G>();
  c10::BFloat16* out = t.param.defined() ? t.param.data_ptr<c10::BFloat16>() : nullptr;
  const int64_t n = t.master.numel();
  for (int64_t i = 0; i < n; ++i) {
    adamw_element(p[i], m[i], v[i], static_cast<float>(g[i]) * scale, s, t.decay);
    if (out != nullptr) out[i] = c10::BFloat16(p[i]);  // round to nearest even
  }
}

// The CUDA kernel's summation order, so that both give the same bits: 256 lanes each sum a strided slice, lanes
// combine as a shuffle tree within each warp of 32 (lane i += lane i + off, off = 16 ... 1), then the 8 warp sums
// in order.
float chunk_square_sum(const float* x, int64_t n) {
  constexpr int kLanes = 256, kWarp = 32;
  float lane[kLanes] = {};
  for (int t = 0; t < kLanes; ++t) {
    for (int64_t i = t; i < n; i += kLanes) lane[t] += x[i] * x[i];
  }
  float total = 0.0f;
  for (int w = 0; w < kLanes / kWarp; ++w) {
    float* v = lane + w * kWarp;
    for (int off = kWarp / 2; off > 0; off /= 2) {
      for (int i = 0; i + off < kWarp; ++i) v[i] += v[i + off];
    }
    total += v[0];
  }
  return total;
}

}  // namespace

AdamWScalars adamw_scalars(double lr, const OptimConfig& o, int64_t t) {
  const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
  return {.beta1 = static_cast<float>(o.beta1),
          .one_minus_beta1 = static_cast<float>(1.0 - o.beta1),
          .beta2 = static_cast<float>(o.beta2),
          .one_minus_beta2 = static_cast<float>(1.0 - o.beta2),
          .neg_step_size = static_cast<float>(-(lr / bc1)),
          .bc2_sqrt = static_cast<float>(std::sqrt(bc2)),
          .eps = static_cast<float>(o.eps),
          .decay_factor = static_cast<float>(1.0 - lr * o.weight_decay)};
}

std::optional<PreviousStep> previous_step(double lr, const OptimConfig& o, int64_t t,
                                          const torch::Tensor& previous_apply) {
  if (!previous_apply.defined()) return std::nullopt;
  QAD_CHECK(t >= 2, "previous_step: step {} cannot follow a step still unread", t);
  return PreviousStep{previous_apply, adamw_scalars(lr, o, t - 1)};
}

bool fused_adamw_supports(const AdamWTensors& t) {
  const auto d = t.master.device();
  auto ok = [&](const torch::Tensor& x, bool f32) {
    return x.defined() && x.device() == d && x.is_contiguous() && x.numel() == t.master.numel() &&
           (f32 ? x.scalar_type() == torch::kFloat32 : is_bf16_or_f32(x));
  };
  if (!ok(t.master, true) || !ok(t.exp_avg, true) || !ok(t.exp_avg_sq, true) || !ok(t.grad, false)) return false;
  if (t.param.defined() && !(t.param.device() == d && t.param.is_contiguous() && t.param.numel() == t.master.numel() &&
                             t.param.scalar_type() == torch::kBFloat16)) {
    return false;
  }
  if (d.is_cuda()) {
#ifdef QAD_HAS_CUDA
    return true;
#else
    return false;
#endif
  }
  return d.is_cpu();
}

void fused_adamw_reference_(const std::vector<AdamWTensors>& tensors, const AdamWScalars& chosen,
                            const torch::Tensor& grad_scale, const torch::Tensor& apply, const PreviousStep* previous) {
  if (tensors.empty()) return;
  const auto cpu = torch::Device(torch::kCPU);
  check_scalar(grad_scale, "grad_scale", cpu);
  check_scalar(apply, "apply", cpu);
  if (previous != nullptr) check_scalar(previous->previous_apply, "previous_apply", cpu);
  const AdamWScalars& s =
      previous != nullptr && previous->previous_apply.item<float>() == 0.0f ? previous->if_skipped : chosen;
  const bool skip = apply.item<float>() == 0.0f;
  const float scale = grad_scale.item<float>();
  for (const auto& t : tensors) {
    QAD_CHECK(fused_adamw_supports(t) && t.master.is_cpu(), "fused_adamw_reference_: unsupported tensors (FP32 "
              "contiguous master and moments, FP32/BF16 grad, BF16 or no model copy, all on the CPU)");
    if (!skip && t.grad.scalar_type() == torch::kBFloat16) reference_one<c10::BFloat16>(t, s, scale);
    else if (!skip) reference_one<float>(t, s, scale);
    // Written through raw pointers: move the version counters as an in-place op would (the NVFP4 weight cache
    // keys on them); also when skipped, as the CUDA kernel's caller cannot know.
    t.master.unsafeGetTensorImpl()->bump_version();
    if (t.param.defined()) t.param.unsafeGetTensorImpl()->bump_version();
  }
}

void fused_adamw_(const std::vector<AdamWTensors>& tensors, const AdamWScalars& s, const torch::Tensor& grad_scale,
                  const torch::Tensor& apply, const PreviousStep* previous) {
  if (tensors.empty()) return;
  const auto d = tensors.front().master.device();
  for (const auto& t : tensors) {
    QAD_CHECK(fused_adamw_supports(t) && t.master.device() == d,
              "fused_adamw_: unsupported tensors (FP32 contiguous master and moments, FP32/BF16 grad, BF16 or no "
              "model copy, all on one device)");
  }
  if (d.is_cpu()) return fused_adamw_reference_(tensors, s, grad_scale, apply, previous);
#ifdef QAD_HAS_CUDA
  check_scalar(grad_scale, "grad_scale", d);
  check_scalar(apply, "apply", d);
  if (previous != nullptr) check_scalar(previous->previous_apply, "previous_apply", d);
  detail::fused_adamw_cuda(tensors, s, grad_scale, apply,
                           previous != nullptr ? previous->previous_apply : torch::Tensor(),
                           previous != nullptr ? previous->if_skipped : s);
#else
  fail("fused_adamw_: this build has no CUDA kernels");
#endif
}

torch::Tensor grad_square_sum_reference(const std::vector<torch::Tensor>& grads) {
  std::vector<float> partials;
  for (const auto& g0 : grads) {
    QAD_CHECK(g0.is_cpu() && is_bf16_or_f32(g0), "grad_square_sum_reference: FP32/BF16 CPU tensors only");
    const auto g = g0.to(torch::kFloat32).contiguous();
    const float* x = g.data_ptr<float>();
    for (int64_t b = 0; b < g.numel(); b += kNormChunk) {
      const int64_t e = std::min(g.numel(), b + kNormChunk);
      partials.push_back(chunk_square_sum(x + b, e - b));
    }
  }
  double total = 0;
  for (float p : partials) total += static_cast<double>(p);
  return torch::full({}, total, torch::kFloat64);
}

torch::Tensor grad_square_sum(const std::vector<torch::Tensor>& grads) {
  if (grads.empty()) return torch::zeros({}, torch::kFloat64);
  const auto d = grads.front().device();
  if (d.is_cpu()) return grad_square_sum_reference(grads);
#ifdef QAD_HAS_CUDA
  for (const auto& g : grads) {
    QAD_CHECK(g.device() == d && is_bf16_or_f32(g), "grad_square_sum: FP32/BF16 gradients on one device");
  }
  // Partials in a fixed order, summed in FP64 by one reduction: deterministic from run to run.
  return detail::grad_square_partials_cuda(grads).to(torch::kFloat64).sum();
#else
  fail("grad_square_sum: this build has no CUDA kernels");
#endif
}

}  // namespace qad::train
