// hf_quant_config.json and config.json's quantization_config, as ModelOpt writes them and vLLM reads them.
#include "quant/export_json.h"

#include "qad/version.h"

namespace qad::quant {

nlohmann::json hf_quant_config_json(const std::vector<std::string>& exclude_modules) {
  return {{"producer", {{"name", "qad"}, {"version", QAD_VERSION}}},
          {"quantization",
           {{"quant_algo", "NVFP4"},
            {"kv_cache_quant_algo", nullptr},
            {"group_size", kGroupSize},
            {"exclude_modules", exclude_modules}}}};
}

nlohmann::json config_quantization_json(const std::vector<std::string>& exclude_modules) {
  const nlohmann::json fp4 = {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", kGroupSize}};
  return {{"quant_method", "modelopt"},
          {"quant_algo", "NVFP4"},
          {"producer", {{"name", "qad"}, {"version", QAD_VERSION}}},
          {"group_size", kGroupSize},
          {"kv_cache_scheme", nullptr},
          {"config_groups", {{"group_0", {{"weights", fp4}, {"input_activations", fp4}, {"targets", {"Linear"}}}}}},
          {"ignore", exclude_modules}};
}

}  // namespace qad::quant
