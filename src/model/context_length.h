// A warning where a job uses more positions than the model was trained on (max_position_embeddings): RoPE then
// extrapolates, and quality drops without any error.
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <string_view>

#include "model/config.h"

namespace qad::model {

// Prints "qad: warning: <what> (<positions> positions) is longer than <model>'s max_position_embeddings (N); ..."
// to stderr when positions exceed it (a config without the field is not checked).
inline void warn_beyond_context(const ModelConfig& c, int64_t positions, std::string_view what, std::string_view model) {
  if (c.max_position_embeddings <= 0 || positions <= c.max_position_embeddings) return;
  fmt::print(stderr, "qad: warning: {} ({} positions) is longer than {}'s max_position_embeddings ({}); positions "
             "beyond it are outside what the model was trained on\n", what, positions, model, c.max_position_embeddings);
}

}  // namespace qad::model
