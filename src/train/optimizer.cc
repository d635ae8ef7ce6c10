// AdamW with FP32 master weights (see optimizer.h).
#include "train/optimizer.h"

#include <cmath>
#include <map>

#include "train/fused_adamw.h"
#include "train/offload_adamw.h"
#include "util/error.h"
#include "util/torch_format.h"

namespace qad::train {

AdamW::AdamW(NamedTensors params, const OptimConfig& options) : params_(std::move(params)), options_(options) {
  torch::NoGradGuard ng;
  for (auto& [name, p] : params_) {
    p.set_requires_grad(true);
    Slot s;
    s.name = name;
    s.param = p;
    // BF16/FP16 parameters get an FP32 master copy; FP32 (and FP64, for tests) parameters are their own master.
    const bool low = p.scalar_type() == torch::kBFloat16 || p.scalar_type() == torch::kHalf;
    const auto master_dtype = low ? torch::kFloat32 : p.scalar_type();
    s.master = low ? p.detach().to(master_dtype).clone() : p;
    s.exp_avg = torch::zeros(p.sizes(), p.options().dtype(master_dtype));
    s.exp_avg_sq = torch::zeros(p.sizes(), p.options().dtype(master_dtype));
    s.decay = p.dim() >= 2;  // no decay on norms and biases (HF Trainer's rule)
    slots_.push_back(std::move(s));
  }
  bool all_cuda = !slots_.empty();
  for (const auto& s : slots_) all_cuda = all_cuda && s.param.is_cuda();
#ifdef QAD_HAS_CUDA
  if (all_cuda) set_fused(true);
#endif
}

torch::Tensor Optimizer::grad_norm_tensor() const {
  fail("this optimizer has no device-side step (device_step_available() is false)");
}
void Optimizer::step_on_device(double, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  fail("this optimizer has no device-side step (device_step_available() is false)");
}
void Optimizer::cancel_step() { fail("this optimizer has no device-side step (device_step_available() is false)"); }

void AdamW::set_fused(bool on) {
  if (on) {
    for (const auto& s : slots_) {
      AdamWTensors t{s.master, s.exp_avg, s.exp_avg_sq, s.master, s.master.is_same(s.param) ? torch::Tensor() : s.param,
                     s.decay};
      QAD_CHECK(fused_adamw_supports(t), "AdamW: the fused update does not take '{}' ({} on {}; it needs FP32 masters "
                "with a BF16 or FP32 model on one device)", s.name, c10::toString(s.param.scalar_type()),
                s.param.device().str());
    }
  }
  fused_ = on;
}

torch::Tensor AdamW::grad_norm_tensor() const {
  std::vector<torch::Tensor> grads;
  for (const auto& s : slots_) {
    if (s.param.grad().defined()) grads.push_back(s.param.grad());
  }
  return grad_square_sum(grads).sqrt();
}

void AdamW::step_on_device(double lr, const torch::Tensor& grad_scale, const torch::Tensor& apply,
                           const torch::Tensor& previous_apply) {
  QAD_CHECK(fused_, "AdamW::step_on_device: the fused update is off");
  ++t_;
  std::vector<AdamWTensors> ts;
  for (auto& s : slots_) {
    const auto& g = s.param.grad();
    if (!g.defined()) continue;
    ts.push_back({s.master, s.exp_avg, s.exp_avg_sq, g.contiguous(), s.master.is_same(s.param) ? torch::Tensor() : s.param,
                  s.decay && options_.weight_decay != 0});
  }
  const auto previous = previous_step(lr, options_, t_, previous_apply);
  fused_adamw_(ts, adamw_scalars(lr, options_, t_), grad_scale, apply, previous ? &*previous : nullptr);
}

torch::Tensor square_sum_f64(const torch::Tensor& g) {
  torch::NoGradGuard ng;
  if (!g.is_cpu()) return g.to(torch::kFloat32).pow(2).sum().to(torch::kFloat64);
  return g.to(torch::kFloat64).pow(2).sum();  // FP64 squares of FP32/BF16 values are exact
}

double global_grad_norm(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> sq;
  for (const auto& p : params) {
    const auto& g = p.grad();
    if (g.defined()) sq.push_back(square_sum_f64(g));
  }
  if (sq.empty()) return 0.0;
  return std::sqrt(torch::stack(sq).sum().item<double>());
}

double AdamW::grad_norm() const {
  std::vector<torch::Tensor> ps;
  for (const auto& s : slots_) ps.push_back(s.param);
  return global_grad_norm(ps);
}

std::unique_ptr<Optimizer> make_adamw(NamedTensors params, const OptimConfig& options) {
  if (options.offload == "optimizer") return std::make_unique<OffloadAdamW>(std::move(params), options);
  QAD_CHECK(options.offload == "none", "optim.offload '{}': use none or optimizer (--offload)", options.offload);
  return std::make_unique<AdamW>(std::move(params), options);
}

void AdamW::scale_grads(double factor) {
  torch::NoGradGuard ng;
  for (auto& s : slots_) {
    auto g = s.param.grad();
    if (g.defined()) g.mul_(factor);
  }
}

void AdamW::zero_grad() {
  for (auto& s : slots_) {
    s.param.mutable_grad().reset();
  }
}

void adam_update_(torch::Tensor& master, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq, const torch::Tensor& g,
                  double lr, const OptimConfig& o, int64_t t) {
  const double b1 = o.beta1, b2 = o.beta2;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  exp_avg.mul_(b1).add_(g, 1.0 - b1);
  exp_avg_sq.mul_(b2).addcmul_(g, g, 1.0 - b2);
  const auto denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(o.eps);
  master.addcdiv_(exp_avg, denom, -step_size);
}

void AdamW::step(double lr) {
  torch::NoGradGuard ng;
  ++t_;
  for (auto& s : slots_) {
    const auto& g0 = s.param.grad();
    if (!g0.defined()) continue;
    const auto g = g0.to(s.master.scalar_type());
    if (s.decay && options_.weight_decay != 0) s.master.mul_(1.0 - lr * options_.weight_decay);
    adam_update_(s.master, s.exp_avg, s.exp_avg_sq, g, lr, options_, t_);
    if (!s.master.is_same(s.param)) s.param.copy_(s.master);
  }
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  for (const auto& s : slots_) {
    if (!s.master.is_same(s.param)) out.emplace_back("master." + s.name, s.master);
    out.emplace_back("exp_avg." + s.name, s.exp_avg);
    out.emplace_back("exp_avg_sq." + s.name, s.exp_avg_sq);
  }
  return out;
}

const torch::Tensor& StateByName::at(const std::string& key, at::IntArrayRef shape) const {
  auto it = by_name_.find(key);
  QAD_CHECK(it != by_name_.end(), "optimizer state: tensor '{}' is missing (the checkpoint was written for another "
            "model or by another optimizer)", key);
  QAD_CHECK(it->second.sizes() == shape, "optimizer state: '{}' has shape {}, the model needs {}", key,
            shape_str(it->second.sizes()), shape_str(shape));
  return it->second;
}

void AdamW::load_state(const NamedTensors& state, int64_t steps) {
  torch::NoGradGuard ng;
  const StateByName by_name(state);
  auto take = [&](const std::string& key, torch::Tensor& dst) { dst.copy_(by_name.at(key, dst.sizes())); };
  for (auto& s : slots_) {
    if (!s.master.is_same(s.param)) {
      take("master." + s.name, s.master);
      s.param.copy_(s.master);
    }
    take("exp_avg." + s.name, s.exp_avg);
    take("exp_avg_sq." + s.name, s.exp_avg_sq);
  }
  t_ = steps;
}

}  // namespace qad::train
