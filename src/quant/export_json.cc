// hf_quant_config.json and config.json's quantization_config, as ModelOpt writes them and vLLM reads them.
#include "quant/export_json.h"

#include "qad/version.h"

namespace qad::quant {

const char* quant_algo_name(NvFp4Format f) { return f == NvFp4Format::kW4A16 ? "W4A16_NVFP4" : "NVFP4"; }

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

}  // namespace qad::quant
