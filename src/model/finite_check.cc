// all_finite / first_non_finite (see finite_check.h).
#include "model/finite_check.h"

#include <cmath>

#include "util/error.h"

namespace qad::model {

bool all_finite(const torch::Tensor& t) {
  if (t.numel() == 0 || !t.is_floating_point()) return true;
  torch::NoGradGuard no_grad;
  const auto d = t.detach();
  return std::isfinite(d.max().item<double>()) && std::isfinite(d.min().item<double>());
}

std::optional<std::string> first_non_finite(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  for (const auto& [name, t] : tensors) {
    if (!all_finite(t)) return name;
  }
  return std::nullopt;
}

void check_finite_weights(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& where,
                          const std::string& advice) {
  if (auto bad = first_non_finite(tensors)) fail("{}: tensor '{}' holds NaN or Inf values; {}", where, *bad, advice);
}

}  // namespace qad::model
