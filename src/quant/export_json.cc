// hf_quant_config.json and config.json's quantization_config, as ModelOpt writes them and vLLM reads them.
#include "quant/export_json.h"

#include "qad/version.h"

namespace qad::quant {

const char* quant_algo_name(NvFp4Format f) {
  switch (f) {
    case NvFp4Format::kW4A16: return "W4A16_NVFP4";
    case NvFp4Format::kMixed: return kMixedPrecision;
    case NvFp4Format::kW4A4: break;
  }
  return "NVFP4";
}

std::string format_label(NvFp4Format f, bool fp8_kv) {
  return std::string(quant_algo_name(f)) + (fp8_kv ? " + FP8 KV" : "");
}

nlohmann::json fp8_kv_cache_scheme() { return {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}}; }

nlohmann::json hf_quant_config_json(const std::vector<std::string>& exclude_modules, NvFp4Format format,
                                    bool fp8_kv) {
  return {{"producer", {{"name", "qad"}, {"version", QAD_VERSION}}},
          {"quantization",
           {{"quant_algo", quant_algo_name(format)},
            {"kv_cache_quant_algo", fp8_kv ? nlohmann::json(kKvCacheFp8) : nlohmann::json()},
            {"group_size", kGroupSize},
            {"exclude_modules", exclude_modules}}}};
}

nlohmann::json config_quantization_json(const std::vector<std::string>& exclude_modules, NvFp4Format format,
                                        bool fp8_kv) {
  const nlohmann::json fp4 = {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", kGroupSize}};
  const nlohmann::json activations = format == NvFp4Format::kW4A16 ? nlohmann::json() : fp4;
  return {{"quant_method", "modelopt"},
          {"quant_algo", quant_algo_name(format)},
          {"producer", {{"name", "qad"}, {"version", QAD_VERSION}}},
          {"group_size", kGroupSize},
          {"kv_cache_scheme", fp8_kv ? fp8_kv_cache_scheme() : nlohmann::json()},
          {"config_groups", {{"group_0", {{"weights", fp4}, {"input_activations", activations}, {"targets", {"Linear"}}}}}},
          {"ignore", exclude_modules}};
}

nlohmann::json quantized_layer_json(const std::string& algo) {
  if (algo == kFp8Algo) return {{"quant_algo", algo}};
  return {{"quant_algo", algo}, {"group_size", kGroupSize}};
}

nlohmann::json mixed_hf_quant_config_json(const std::map<std::string, std::string>& layers,
                                          const std::vector<std::string>& exclude_modules, bool fp8_kv) {
  nlohmann::json q = nlohmann::json::object();
  for (const auto& [m, algo] : layers) q[m] = quantized_layer_json(algo);
  return {{"producer", {{"name", "qad"}, {"version", QAD_VERSION}}},
          {"quantization",
           {{"quant_algo", kMixedPrecision},
            {"kv_cache_quant_algo", fp8_kv ? nlohmann::json(kKvCacheFp8) : nlohmann::json()},
            {"quantized_layers", q},
            {"exclude_modules", exclude_modules}}}};
}

nlohmann::json mixed_config_quantization_json(const std::map<std::string, std::string>& layers,
                                              const std::vector<std::string>& exclude_modules, bool fp8_kv) {
  const nlohmann::json fp4 = {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", kGroupSize}};
  const nlohmann::json fp8 = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
  nlohmann::json groups = nlohmann::json::object(), q = nlohmann::json::object();
  int index = 0;
  for (const char* algo : {"NVFP4", "W4A16_NVFP4", kFp8Algo}) {
    std::vector<std::string> targets;  // std::map order: sorted
    for (const auto& [m, a] : layers) {
      if (a == algo) targets.push_back(m);
    }
    if (targets.empty()) continue;
    const std::string a = algo;
    nlohmann::json g = a == kFp8Algo ? nlohmann::json{{"weights", fp8}, {"input_activations", fp8}}
                                     : nlohmann::json{{"weights", fp4},
                                                      {"input_activations", a == "NVFP4" ? fp4 : nlohmann::json()}};
    g["targets"] = targets;
    groups["group_" + std::to_string(index++)] = g;
  }
  for (const auto& [m, algo] : layers) q[m] = quantized_layer_json(algo);
  return {{"quant_method", "modelopt"},
          {"quant_algo", kMixedPrecision},
          {"producer", {{"name", "qad"}, {"version", QAD_VERSION}}},
          {"kv_cache_scheme", fp8_kv ? fp8_kv_cache_scheme() : nlohmann::json()},
          {"config_groups", groups},
          {"quantized_layers", q},
          {"ignore", exclude_modules}};
}

}  // namespace qad::quant
