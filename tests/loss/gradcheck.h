// Central-difference gradient checker for scalar functions of one tensor (FP64), and a tolerance comparison
// that reports the worst element.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>

namespace qad::testing {

// d fn / d x by central differences with step h, element by element (small tensors only).
inline torch::Tensor numerical_gradient(const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                                        const torch::Tensor& x, double h = 1e-6) {
  torch::NoGradGuard no_grad;
  auto base = x.detach().to(torch::kFloat64).contiguous().clone();
  auto flat = base.view({-1});
  auto grad = torch::zeros_like(flat);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double v = flat[i].item<double>();
    flat[i] = v + h;
    const double up = fn(base).item<double>();
    flat[i] = v - h;
    const double down = fn(base).item<double>();
    flat[i] = v;
    grad[i] = (up - down) / (2 * h);
  }
  return grad.view(x.sizes());
}

// |a - b| <= atol + rtol * |b| everywhere; on failure names the worst element.
inline ::testing::AssertionResult all_close(const torch::Tensor& a, const torch::Tensor& b, double rtol, double atol) {
  if (!a.defined() || !b.defined()) return ::testing::AssertionFailure() << "undefined tensor";
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shapes differ: " << a.sizes() << " vs " << b.sizes();
  auto ad = a.detach().to(torch::kFloat64).cpu().reshape({-1}), bd = b.detach().to(torch::kFloat64).cpu().reshape({-1});
  auto excess = (ad - bd).abs() - (atol + rtol * bd.abs());
  if (ad.numel() == 0 || excess.max().item<double>() <= 0) return ::testing::AssertionSuccess();
  const int64_t i = excess.argmax().item<int64_t>();
  return ::testing::AssertionFailure() << "worst element " << i << ": " << ad[i].item<double>() << " vs "
                                       << bd[i].item<double>() << " (|diff| " << (ad[i] - bd[i]).abs().item<double>()
                                       << ", rtol " << rtol << ", atol " << atol << ")";
}

}  // namespace qad::testing
