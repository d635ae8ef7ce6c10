// The JSON that marks an NVFP4 checkpoint for the engines (../shared/docs/NVFP4.md): hf_quant_config.json and
// config.json's quantization_config, from the format and the list of Linears left in high precision.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qad::quant {

inline constexpr int kGroupSize = 16;

// W4A4: NVFP4 weights and activations (quant_algo "NVFP4": every Linear has a static input_scale). W4A16:
// NVFP4 weights, activations in the model's dtype (ModelOpt's "W4A16_NVFP4": no input_scale; what Hopper serves).
// kMixed: ModelOpt's MIXED_PRECISION, a per-Linear quant_algo (NVFP4, W4A16_NVFP4 or FP8) in quantized_layers.
enum class NvFp4Format { kW4A4, kW4A16, kMixed };
const char* quant_algo_name(NvFp4Format f);
// What the commands print: the quant_algo, plus " + FP8 KV" with an FP8 KV cache ("NVFP4 + FP8 KV").
std::string format_label(NvFp4Format f, bool fp8_kv);

// {"producer": {"name": "qad", "version"}, "quantization": {"quant_algo": "NVFP4" | "W4A16_NVFP4",
//  "kv_cache_quant_algo": null | "FP8", "group_size": 16, "exclude_modules": [...]}}
nlohmann::json hf_quant_config_json(const std::vector<std::string>& exclude_modules,
                                    NvFp4Format format = NvFp4Format::kW4A4, bool fp8_kv = false);

// config.json's "quantization_config" (compressed-tensors style, quant_method "modelopt"); W4A16's
// input_activations is null; kv_cache_scheme is null, or {"dynamic": false, "num_bits": 8, "type": "float"} with
// an FP8 KV cache (what vLLM's ModelOpt config reads as FP8).
nlohmann::json config_quantization_json(const std::vector<std::string>& exclude_modules,
                                        NvFp4Format format = NvFp4Format::kW4A4, bool fp8_kv = false);

// MIXED_PRECISION (ModelOpt's export, what vLLM's ModelOptMixedPrecisionConfig reads): `layers` maps every quantized
// Linear to its quant_algo ("NVFP4", "W4A16_NVFP4" or "FP8"). hf_quant_config.json:
// {"producer", "quantization": {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo", "quantized_layers":
//  {"<module>": {"quant_algo": "NVFP4", "group_size": 16} | {"quant_algo": "FP8"} | ...}, "exclude_modules"}}.
inline constexpr const char* kMixedPrecision = "MIXED_PRECISION";
inline constexpr const char* kFp8Algo = "FP8";
nlohmann::json quantized_layer_json(const std::string& algo);
nlohmann::json mixed_hf_quant_config_json(const std::map<std::string, std::string>& layers,
                                          const std::vector<std::string>& exclude_modules, bool fp8_kv);
// config.json's quantization_config for it, as ModelOpt's convert_hf_quant_config_format writes it: one config
// group per quant_algo (NVFP4, W4A16_NVFP4, FP8, in that order; targets: the sorted module names), quantized_layers
// as above, ignore, quant_algo, kv_cache_scheme, producer, quant_method "modelopt".
nlohmann::json mixed_config_quantization_json(const std::map<std::string, std::string>& layers,
                                              const std::vector<std::string>& exclude_modules, bool fp8_kv);

// kv_cache_quant_algo's value for an FP8 KV cache, and config.json's kv_cache_scheme for it.
inline constexpr const char* kKvCacheFp8 = "FP8";
nlohmann::json fp8_kv_cache_scheme();

}  // namespace qad::quant
