// The JSON that marks an NVFP4 checkpoint for the engines (../shared/docs/NVFP4.md): hf_quant_config.json and
// config.json's quantization_config, from the list of Linears left in high precision.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qad::quant {

inline constexpr int kGroupSize = 16;

// {"producer": {"name": "qad", "version"}, "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": null,
//  "group_size": 16, "exclude_modules": [...]}}
nlohmann::json hf_quant_config_json(const std::vector<std::string>& exclude_modules);

// config.json's "quantization_config" (compressed-tensors style, quant_method "modelopt").
nlohmann::json config_quantization_json(const std::vector<std::string>& exclude_modules);

}  // namespace qad::quant
