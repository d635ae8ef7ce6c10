// Non-finite values (NaN, Inf) in weights and outputs: a checkpoint saved from a diverged run, or activations
// that overflow, would otherwise turn into wrong figures (agreement 0, perplexity nan) or tracebacks later.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace qad::model {

// True when every element is finite. Two reductions (min, max; both propagate NaN), no full-size temporary.
bool all_finite(const torch::Tensor& t);

// The name of the first tensor holding a NaN or Inf, if any.
std::optional<std::string> first_non_finite(const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

// Throws qad::Error "<where>: tensor '<name>' holds NaN or Inf values; <advice>" for the first such tensor.
void check_finite_weights(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& where,
                          const std::string& advice);

}  // namespace qad::model
