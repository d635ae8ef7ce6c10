// load_nvfp4: an NVFP4 checkpoint in the ModelOpt unified layout (ours or ModelOpt's; quant_algo NVFP4, the
// weight-only W4A16_NVFP4, or MIXED_PRECISION with NVFP4 / W4A16_NVFP4 / FP8 layers) as a runnable CausalLM: weights dequantized exactly (the values the engine multiplies
// with), inputs fake-quantized with the stored static input_scale (W4A4) or left as they are (W4A16). Every
// malformed tensor is reported with its file and name.
#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors_torch.h"
#include "model/weights.h"
#include "model/finite_check.h"
#include "nvfp4/block_scales.h"
#include "nvfp4/quantize.h"
#include "nvfp4/scales.h"
#include "quant/export_json.h"
#include "quant/kv_quant.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/torch_format.h"

namespace qad::quant {
namespace fs = std::filesystem;
namespace {

// The quantization section ({"quant_algo", "group_size", "kv_cache_quant_algo", "exclude_modules"}) from
// hf_quant_config.json, or else from config.json's quantization_config; null when neither names one.
nlohmann::json quant_section(const fs::path& dir, std::string* source) {
  std::error_code ec;
  const auto hf = dir / "hf_quant_config.json";
  if (fs::exists(hf, ec)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(hf));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON ({})", hf.string(), e.what());
    }
    QAD_CHECK(j.is_object() && j.contains("quantization") && j["quantization"].is_object(),
              "{}: has no \"quantization\" object", hf.string());
    if (source) *source = hf.string();
    return j["quantization"];
  }
  const auto cfg = dir / "config.json";
  if (!fs::exists(cfg, ec)) return nullptr;
  nlohmann::json j;
  try {
    j = model::parse_json_nonfinite(read_file(cfg));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", cfg.string(), e.what());
  }
  if (!j.is_object() || !j.contains("quantization_config") || !j["quantization_config"].is_object()) return nullptr;
  const auto& q = j["quantization_config"];
  if (q.value("quant_method", std::string()) != "modelopt") return nullptr;
  nlohmann::json s = {{"quant_algo", q.value("quant_algo", std::string())},
                      {"exclude_modules", q.value("ignore", nlohmann::json::array())}};
  if (q.contains("group_size")) {
    s["group_size"] = q["group_size"];
  } else if (q.contains("config_groups")) {
    s["group_size"] = q["config_groups"].value("group_0", nlohmann::json::object())
                          .value("weights", nlohmann::json::object())
                          .value("group_size", nlohmann::json());
  }
  if (q.contains("quantized_layers")) s["quantized_layers"] = q["quantized_layers"];
  s["kv_cache_quant_algo"] = nlohmann::json();
  if (q.contains("kv_cache_scheme") && !q["kv_cache_scheme"].is_null()) {
    // vLLM's reading of the compressed-tensors form: {"type": "float", "num_bits": 8} is an FP8 KV cache.
    const auto& kv = q["kv_cache_scheme"];
    const bool fp8 = kv.is_object() && kv.value("type", nlohmann::json()) == "float" &&
                     kv.value("num_bits", nlohmann::json()) == 8;
    s["kv_cache_quant_algo"] = fp8 ? nlohmann::json(kKvCacheFp8) : kv;
  }
  if (source) *source = cfg.string() + " (quantization_config)";
  return s;
}

struct Loaded {
  torch::Tensor tensor;
  io::DType dtype;
  std::string where;  // "<file>: tensor '<name>'"
};

Loaded fetch(const io::Checkpoint& ckpt, const std::string& name, const fs::path& dir) {
  const auto* e = ckpt.find(name);
  QAD_CHECK(e != nullptr, "{}: tensor '{}' is missing (an NVFP4 Linear needs .weight, .weight_scale, "
            ".weight_scale_2, and .input_scale unless quant_algo is W4A16_NVFP4)", dir.string(), name);
  return {io::to_tensor(*e), e->info->dtype, fmt::format("{}: tensor '{}'", e->file->path().string(), name)};
}

float scalar_f32(const Loaded& t) {
  QAD_CHECK(t.dtype == io::DType::F32, "{} must be F32, got {}", t.where, io::dtype_name(t.dtype));
  QAD_CHECK(t.tensor.numel() == 1, "{} must be a scalar, got shape {}", t.where, shape_str(t.tensor.sizes()));
  const float v = t.tensor.reshape({}).item<float>();
  QAD_CHECK(std::isfinite(v) && v >= 0.0f, "{} = {} is not a finite non-negative scale", t.where, v);
  return v;
}

// kv_cache_quant_algo: null (the KV cache in the model's dtype) or FP8 (ModelOpt may write it in lower case, which
// vLLM accepts too); anything else is refused.
bool fp8_kv_cache(const nlohmann::json& section, const std::string& source) {
  if (!section.contains("kv_cache_quant_algo") || section["kv_cache_quant_algo"].is_null()) return false;
  const auto& kv = section["kv_cache_quant_algo"];
  std::string algo = kv.is_string() ? kv.get<std::string>() : std::string();
  for (auto& c : algo) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  QAD_CHECK(algo == kKvCacheFp8, "{}: kv_cache_quant_algo {} is not supported (qad reads null and \"FP8\": an FP8 "
            "E4M3 KV cache with per-layer k_scale / v_scale)", source, kv.dump());
  return true;
}

// The formats load_nvfp4 reads, by quant_algo.
std::optional<NvFp4Format> format_of(const std::string& algo) {
  if (algo == quant_algo_name(NvFp4Format::kW4A4)) return NvFp4Format::kW4A4;
  if (algo == quant_algo_name(NvFp4Format::kW4A16)) return NvFp4Format::kW4A16;
  if (algo == quant_algo_name(NvFp4Format::kMixed)) return NvFp4Format::kMixed;
  return std::nullopt;
}

// MIXED_PRECISION's quantized_layers: module -> quant_algo (upper case; NVFP4, W4A16_NVFP4 or FP8), checked.
std::map<std::string, std::string> mixed_layers(const nlohmann::json& section, const std::string& source) {
  QAD_CHECK(section.contains("quantized_layers") && section["quantized_layers"].is_object() &&
                !section["quantized_layers"].empty(),
            "{}: quant_algo MIXED_PRECISION needs a non-empty \"quantized_layers\" object", source);
  std::map<std::string, std::string> out;
  for (const auto& [m, v] : section["quantized_layers"].items()) {
    QAD_CHECK(v.is_object() && v.contains("quant_algo") && v["quant_algo"].is_string(), "{}: quantized_layers[\"{}\"] "
              "is not {{\"quant_algo\": ...}}", source, m);
    std::string algo = v["quant_algo"].get<std::string>();
    for (auto& c : algo) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    QAD_CHECK(algo == "NVFP4" || algo == "W4A16_NVFP4" || algo == kFp8Algo, "{}: quantized_layers[\"{}\"] has "
              "quant_algo {}; qad reads NVFP4, W4A16_NVFP4 and FP8 layers", source, m, v["quant_algo"].dump());
    if (algo != kFp8Algo && v.contains("group_size")) {
      QAD_CHECK(v["group_size"].is_number_integer() && v["group_size"].get<int64_t>() == kGroupSize,
                "{}: quantized_layers[\"{}\"] has group_size {}; NVFP4 needs 16", source, m, v["group_size"].dump());
    }
    out[m] = algo;
  }
  return out;
}

}  // namespace

bool is_nvfp4_checkpoint(const fs::path& dir) {
  try {
    auto s = quant_section(dir, nullptr);
    return s.is_object() && format_of(s.value("quant_algo", std::string())).has_value();
  } catch (const Error&) {
    return false;
  }
}

model::CausalLM load_nvfp4(const fs::path& dir, torch::Device device, torch::ScalarType dtype) {
  model::dtype_config_name(dtype);  // validates
  std::error_code ec;
  QAD_CHECK(fs::is_directory(dir, ec), "{}: not a directory (an NVFP4 checkpoint is a directory)", dir.string());
  std::string source;
  const auto section = quant_section(dir, &source);
  QAD_CHECK(section.is_object(), "{}: not an NVFP4 checkpoint (no hf_quant_config.json and no modelopt "
            "quantization_config in config.json); load it as a plain HF model", dir.string());
  const auto algo = section.value("quant_algo", std::string());
  const auto format = format_of(algo);
  QAD_CHECK(format.has_value(), "{}: quant_algo is '{}'; qad reads NVFP4 and W4A16_NVFP4 checkpoints", source, algo);
  const bool mixed = *format == NvFp4Format::kMixed;
  QAD_CHECK(mixed || (section.contains("group_size") && section["group_size"].is_number_integer() &&
                      section["group_size"].get<int64_t>() == kGroupSize),
            "{}: group_size must be 16 for NVFP4, got {}", source,
            section.contains("group_size") ? section["group_size"].dump() : "nothing");
  auto layers = mixed ? mixed_layers(section, source) : std::map<std::string, std::string>();
  const bool fp8_kv = fp8_kv_cache(section, source);

  auto config = model::load_config(dir);
  model::CausalLM lm(config);
  auto ckpt = io::Checkpoint::open(dir);
  std::set<std::string> used;  // the NVFP4 tensors read here (load_hf_tensors loads the rest)
  torch::NoGradGuard no_grad;

  // Quantized Linears: the checkpoint has <p>.weight_scale (MIXED_PRECISION: those in quantized_layers).
  for (auto l : lm->linears()) {
    const auto& p = l->name();
    std::string algo = quant_algo_name(*format);
    if (mixed) {
      auto it = layers.find(p);
      algo = it == layers.end() ? std::string() : it->second;
      if (it != layers.end()) layers.erase(it);
    }
    const bool weight_only = algo == quant_algo_name(NvFp4Format::kW4A16);
    if (algo.empty() || (!mixed && ckpt.find(p + ".weight_scale") == nullptr)) {
      QAD_CHECK(ckpt.find(p + ".input_scale") == nullptr && ckpt.find(p + ".weight_scale_2") == nullptr &&
                    (!mixed || ckpt.find(p + ".weight_scale") == nullptr),
                "{}: '{}' has quantization scales but {}", dir.string(), p,
                mixed ? "is not in quantized_layers" : fmt::format("no '{}.weight_scale'", p));
      continue;
    }
    if (algo == kFp8Algo) {  // W8A8 FP8: E4M3 weight [out, in], per-tensor weight_scale and input_scale
      QAD_CHECK(!(p == "lm_head" && config.tie_word_embeddings), "{}: lm_head is FP8 but tied to the embeddings in "
                "config.json; untie it (tie_word_embeddings: false)", dir.string());
      auto w = fetch(ckpt, p + ".weight", dir), ws = fetch(ckpt, p + ".weight_scale", dir),
           is = fetch(ckpt, p + ".input_scale", dir);
      QAD_CHECK(w.dtype == io::DType::F8_E4M3, "{} must be F8_E4M3 (an FP8 layer), got {}", w.where,
                io::dtype_name(w.dtype));
      QAD_CHECK(w.tensor.dim() == 2 && w.tensor.size(0) == l->out_features() && w.tensor.size(1) == l->in_features(),
                "{} has shape {} but [{}, {}] (= [out, in]) was expected", w.where, shape_str(w.tensor.sizes()),
                l->out_features(), l->in_features());
      const float w_scale = scalar_f32(ws), in_scale = scalar_f32(is);
      QAD_CHECK(w_scale > 0.0f && in_scale > 0.0f, "{}: FP8 scales must be > 0 (weight_scale {}, input_scale {})",
                ws.where, w_scale, in_scale);
      auto codes = w.tensor.scalar_type() == torch::kUInt8 ? w.tensor : w.tensor.view(torch::kUInt8);
      auto values = nvfp4::decode_e4m3_codes(codes.to(device)) * torch::full({}, w_scale, codes.options()
                                                                             .dtype(torch::kFloat32).device(device));
      l->weight.set_data(values.to(dtype));
      for (const auto* suffix : {".weight", ".weight_scale", ".input_scale"}) used.insert(p + suffix);
      auto hook = std::make_shared<NvFp4LinearQuant>(p);
      hook->fp8 = true;
      hook->quantize_weights = false;  // already the FP8 values
      hook->weight_amax = torch::full({}, amax_for_scale(w_scale, ws.where, nvfp4::kE4M3Max), torch::kFloat32);
      hook->input_amax = torch::full({}, amax_for_scale(in_scale, is.where, nvfp4::kE4M3Max), torch::kFloat32);
      l->quant = hook;
      continue;
    }
    QAD_CHECK(!(p == "lm_head" && config.tie_word_embeddings), "{}: lm_head is quantized but tied to the embeddings "
              "in config.json; untie it (tie_word_embeddings: false) or export it unquantized", dir.string());
    const int64_t out = l->out_features(), in = l->in_features();
    auto w = fetch(ckpt, p + ".weight", dir), ws = fetch(ckpt, p + ".weight_scale", dir),
         ws2 = fetch(ckpt, p + ".weight_scale_2", dir);
    QAD_CHECK(!weight_only || ckpt.find(p + ".input_scale") == nullptr, "{}: '{}.input_scale' in a W4A16_NVFP4 "
              "checkpoint (weight-only has none); is quant_algo right?", dir.string(), p);
    QAD_CHECK(in % kGroupSize == 0, "{}: the Linear's input size {} (config.json) is not a multiple of 16; NVFP4 "
              "cannot hold it", w.where, in);
    QAD_CHECK(w.dtype == io::DType::U8, "{} must be U8 (packed E2M1), got {}", w.where, io::dtype_name(w.dtype));
    QAD_CHECK(w.tensor.dim() == 2 && w.tensor.size(0) == out && w.tensor.size(1) == in / 2,
              "{} has shape {} but a packed [{}, {}] (= [out, in/2]) was expected", w.where,
              shape_str(w.tensor.sizes()), out, in / 2);
    QAD_CHECK(ws.dtype == io::DType::F8_E4M3, "{} must be F8_E4M3, got {}", ws.where, io::dtype_name(ws.dtype));
    QAD_CHECK(ws.tensor.dim() == 2 && ws.tensor.size(0) == out && ws.tensor.size(1) == in / kGroupSize,
              "{} has shape {} but [{}, {}] (= [out, in/16]) was expected", ws.where, shape_str(ws.tensor.sizes()),
              out, in / kGroupSize);
    const float sg_w = scalar_f32(ws2);
    auto scales = ws.tensor.scalar_type() == torch::kUInt8 ? ws.tensor : ws.tensor.view(torch::kUInt8);
    nvfp4::QuantizedTensor q{w.tensor.to(device), scales.to(device),
                             torch::full({}, sg_w, torch::TensorOptions().dtype(torch::kFloat32).device(device)), in};
    l->weight.set_data(nvfp4::dequantize(q, dtype));
    for (const auto* suffix : {".weight", ".weight_scale", ".weight_scale_2"}) used.insert(p + suffix);

    auto hook = std::make_shared<NvFp4LinearQuant>(p);
    hook->quantize_weights = false;  // already the NVFP4 values; see quantize_model.h
    // The file's block scales, kept: a re-export writes them back unchanged (whether they were chosen dynamically
    // or by a static search, the file cannot say), and training with static block scales keeps them frozen.
    hook->static_block_scales = true;
    hook->block_scale = scales.to(torch::kCPU).contiguous().clone();
    hook->weight_amax = torch::full({}, amax_for_scale(sg_w, ws2.where), torch::kFloat32);
    if (weight_only) {
      hook->quantize_inputs = false;
    } else {
      auto is = fetch(ckpt, p + ".input_scale", dir);
      hook->input_amax = torch::full({}, amax_for_scale(scalar_f32(is), is.where), torch::kFloat32);
      used.insert(p + ".input_scale");
    }
    l->quant = hook;
  }

  QAD_CHECK(layers.empty(), "{}: quantized_layers names '{}', which is no Linear of this model", source,
            layers.empty() ? "" : layers.begin()->first);

  // The FP8 KV cache: every attention layer's k_scale and v_scale, installed as the engines apply them.
  for (size_t i = 0; i < lm->model->layer_list.size(); ++i) {
    auto hook = std::make_shared<Fp8KvQuant>(fmt::format("model.layers.{}.self_attn", i));
    if (!fp8_kv) {
      for (const auto& n : {hook->k_scale_name(), hook->v_scale_name()}) {
        const auto* e = ckpt.find(n);
        QAD_CHECK(e == nullptr, "{}: tensor '{}' is a KV-cache scale but {} says kv_cache_quant_algo null; set it to "
                  "\"FP8\" if the KV cache is FP8, or remove the tensor", e ? e->file->path().string() : dir.string(),
                  n, source);
      }
      continue;
    }
    float scales[2];
    int j = 0;
    for (const auto& n : {hook->k_scale_name(), hook->v_scale_name()}) {
      QAD_CHECK(ckpt.find(n) != nullptr, "{}: tensor '{}' is missing; {} says kv_cache_quant_algo FP8, which needs "
                "k_scale and v_scale for every attention layer", dir.string(), n, source);
      auto t = fetch(ckpt, n, dir);
      scales[j] = scalar_f32(t);
      QAD_CHECK(scales[j] > 0.0f, "{} = 0; a KV-cache scale must be > 0 (engines read 0 as no scale)", t.where);
      used.insert(n);
      ++j;
    }
    hook->k_scale = torch::full({}, scales[0], torch::kFloat32);
    hook->v_scale = torch::full({}, scales[1], torch::kFloat32);
    lm->model->layer_list[i]->self_attn->kv_quant = hook;
  }

  // Everything else exactly as CausalLM::load does it.
  model::load_hf_tensors(lm, ckpt, dir, device, dtype, /*handled=*/used);

  // Engines give a fused group one input_scale and weight_scale_2 (vLLM takes the max); say so when they differ.
  std::map<std::string, std::pair<float, float>> groups;
  for (auto l : lm->linears()) {
    auto* h = nvfp4_hook(l);
    if (h == nullptr) continue;
    auto g = fused_group(l->name());
    if (g.empty()) continue;
    const std::pair<float, float> s{h->input_amax.defined() ? h->input_amax.item<float>() : 0.0f,
                                    h->weight_amax.item<float>()};
    auto [it, fresh] = groups.emplace(g, s);
    if (!fresh && it->second != s) {
      fmt::print(stderr, "qad: warning: {}: fused group {} does not share input_scale / weight_scale_2 across its "
                 "modules; engines will use the max, so they compute differently from this import\n", dir.string(), g);
    }
  }
  lm->to(device, dtype);
  model::check_finite_weights(lm->hf_tensors(), dir.string(), "the checkpoint is damaged (NaN/Inf scales or "
                              "weights): re-export it");
  return lm;
}

}  // namespace qad::quant
