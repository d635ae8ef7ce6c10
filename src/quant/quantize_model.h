// NVFP4 quantization of a whole CausalLM: which Linears (QuantConfig), fake-quant hooks (apply_nvfp4),
// PTQ calibration (max / MSE), quantizer state for training checkpoints, and the ModelOpt "unified HF"
// export and its import. Semantics and file layout: docs/quant.md (contract: ../shared/docs/NVFP4.md).
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/causal_lm.h"
#include "nvfp4/fake_quantize_autograd.h"
#include "quant/export_json.h"

namespace qad::quant {

enum class CalibMethod { kMax, kMse };

// How calibration reaches the experts of MoE layers (docs/quant.md, "Mixture of experts").
enum class MoeCalibration {
  kAllExperts,  // ModelOpt's rule: during calibration every expert also runs on every token, so each expert's
                // input amax comes from all calibration tokens (the default)
  kRouted,      // experts see only the tokens routed to them; an expert that saw none gets, per projection,
                // the max input amax of the same layer's other experts (reported)
};

// The KV cache (docs/quant.md, "FP8 KV cache"): kept in the model's dtype, or FP8 E4M3 with a static per-tensor
// scale per layer for the keys and one for the values, calibrated like the activations (ModelOpt's
// nvfp4_default-kv_fp8 recipe, what NVIDIA's published NVFP4 checkpoints use).
enum class KvCacheQuant { kNone, kFp8 };

// The weights' per-16-block scales (docs/quant.md, "Static block scales"): derived from the live weight in every
// forward (dynamic: ModelOpt's QAT default), or chosen once at calibration by an MSE search over the E4M3 scale codes
// and then frozen: stored in the hook, trained with, exported as weight_scale (ModelOpt's static NVFP4 weight
// quantizer with its FP8 scale sweep).
enum class BlockScales { kDynamic, kStaticMse };

// A per-module override: the last override whose glob matches a module name wins over include/exclude.
struct ModuleOverride {
  std::string pattern;                   // fnmatch glob over the HF module name
  std::optional<bool> quantize;          // true: quantize even if excluded; false: leave in high precision
  std::optional<bool> quantize_inputs;   // per-module activation fake quant
};

// Member names are the configuration keys (docs/quant.md); `fields` below lists them once.
struct QuantConfig {                       // which Linears, and how (docs/quant.md)
  std::vector<std::string> include = {"*"};            // fnmatch globs over HF module names (model::Linear::name())
  std::vector<std::string> exclude = {"lm_head", "*embed_tokens*", "*norm*", "*router*", "*.gate"};  // ModelOpt's default disabled list semantics
  nvfp4::StraightThrough ste = nvfp4::StraightThrough::kIdentity;
  CalibMethod method = CalibMethod::kMax;
  int64_t calib_samples = 512;            // 0 in a training run: calib_batches x batch_size x world_size rows
  bool quantize_inputs = true;             // activations fake-quantized with the calibrated static amax
  std::vector<ModuleOverride> overrides;   // per-module overrides, applied in order
  MoeCalibration moe_calibration = MoeCalibration::kAllExperts;
  KvCacheQuant kv_cache = KvCacheQuant::kNone;  // fp8: keys/values fake-quantized to FP8 E4M3 (per-layer static scales)
  BlockScales block_scales = BlockScales::kDynamic;  // static_mse: weight block scales MSE-searched once, then frozen
  // fnmatch globs of Linears quantized to FP8 (W8A8: E4M3 weight with a per-tensor weight_scale, static per-tensor
  // input_scale) instead of NVFP4 or high precision, whatever include/exclude/overrides say; any input size; the
  // export is ModelOpt's MIXED_PRECISION (docs/quant.md, "Mixed precision: FP8 layers"). Empty: none.
  std::vector<std::string> fp8_layers;
  // Hybrid models (NemotronH): whole blocks left in high precision, by block type. "none"; "attention" (every
  // attention block); "attention_and_preceding_mamba" (also the nearest Mamba block before each attention block:
  // the QAD paper's Nemotron 3 Nano recipe, recipes/nemotron3_nano_qad.yaml).
  std::string keep_blocks = "none";
};

// What calibration did with MoE experts: the expert projections that saw no calibration token (kRouted only)
// and the amax each was given instead, "<module>: <amax> (max over N other experts)".
struct CalibrationReport {
  std::vector<std::string> experts_without_tokens;
  std::vector<std::string> fallback_notes;
};

// The settings list (util/config_fields.h): key = member name.
template <typename F> void fields(QuantConfig& c, F&& f) {
  f("include", c.include); f("exclude", c.exclude); f("ste", c.ste); f("method", c.method);
  f("calib_samples", c.calib_samples); f("quantize_inputs", c.quantize_inputs); f("overrides", c.overrides);
  f("moe_calibration", c.moe_calibration); f("kv_cache", c.kv_cache); f("block_scales", c.block_scales);
  f("fp8_layers", c.fp8_layers); f("keep_blocks", c.keep_blocks);
}

// The block indices `keep_blocks` leaves in high precision for this model (empty for non-hybrid models and "none").
std::vector<int64_t> kept_blocks(const model::ModelConfig& config, const std::string& keep_blocks);

// Reads a quantization config (the `quant:` section of `qad quantize --config`, a run's `quant.options`) over
// the defaults: `method: max|mse`, `ste: identity|clipped`, `overrides: [{pattern, quantize, quantize_inputs}]`.
// Unknown keys and bad values throw naming `where` and the key. null = the defaults.
QuantConfig quant_config_from_json(const nlohmann::json& j, const std::string& where = "quant");
CalibMethod parse_calib_method(const std::string& s);        // "max" | "mse"
nvfp4::StraightThrough parse_ste(const std::string& s);      // "identity" | "clipped"
// JSON forms of the enums (their names above) and of an override, for the settings list.
void to_json(nlohmann::json& j, CalibMethod m);
void from_json(const nlohmann::json& j, CalibMethod& m);
void to_json(nlohmann::json& j, MoeCalibration m);      // "all_experts" | "routed"
void from_json(const nlohmann::json& j, MoeCalibration& m);
void to_json(nlohmann::json& j, KvCacheQuant k);        // "none" | "fp8"
void from_json(const nlohmann::json& j, KvCacheQuant& k);
KvCacheQuant parse_kv_cache(const std::string& s);      // "none" | "fp8"
void to_json(nlohmann::json& j, BlockScales b);         // "dynamic" | "static_mse"
void from_json(const nlohmann::json& j, BlockScales& b);
BlockScales parse_block_scales(const std::string& s);   // "dynamic" | "static_mse"
void to_json(nlohmann::json& j, const ModuleOverride& o);
void from_json(const nlohmann::json& j, ModuleOverride& o);

// Installs NVFP4 fake-quant hooks (model::LinearQuantHook) on every matching Linear whose input size is a multiple
// of 16 (others are left unquantized, warned about, and listed); returns the quantized module names.
// A fused group (q/k/v; gate/up) is quantized all or not at all (engines fuse them). The weight global amax is
// set from the weights at once (max over the fused group); inputs need calibrate() before the first forward.
// cfg.block_scales static_mse marks the weight quantizers static: calibrate() chooses their block scales.
// Linears matching cfg.fp8_layers get an FP8 hook instead (any input size; a fused group all FP8 or none, a tied
// lm_head never), also when excluded.
// cfg.kv_cache fp8 also installs an FP8 KV-cache hook (quant/kv_quant.h) on every attention layer (none: removes
// them); its scales come from calibrate() too.
std::vector<std::string> apply_nvfp4(model::CausalLM& lm, const QuantConfig& cfg);

// The batches calibrate() reads: for_each_batch(sink) calls sink(input_ids [B,T] int64, mask) per batch; mask is
// [B,T] (1/true = real token) or undefined (all real).
using BatchSink = std::function<void(const torch::Tensor& input_ids, const torch::Tensor& mask)>;
using BatchSource = std::function<void(const BatchSink&)>;

// Calibration: runs the model on batches (callback gives batches of input_ids [B,T] int64 plus optional mask),
// collects input amax per quantized Linear (max, or MSE search for the weight scale as ModelOpt's mse calibrator),
// sets weight amax from the weights, then makes fused groups (q/k/v; gate/up) share input amax and weight global
// scale (max over the group). Shows progress. After this the global amaxes are fixed (training keeps them fixed).
// Rows beyond cfg.calib_samples are ignored. Padding positions (mask 0) do not count towards the input amax.
// Weight quantizers with static block scales (block_scales static_mse) then get them from
// nvfp4::mse_block_scales(weight, weight amax), after the fused groups' weight amax is shared.
// FP8 KV-cache hooks (apply_nvfp4 with kv_cache fp8) get k_scale = max |k| / 448 and v_scale = max |v| / 448 over
// the same tokens, k after q/k-norm and RoPE, v after v_proj (where the engines apply them).
// MoE experts: see MoeCalibration; `report` (optional) receives what was done for experts without tokens.
void calibrate(model::CausalLM& lm, const BatchSource& for_each_batch, const QuantConfig& cfg,
               CalibrationReport* report = nullptr);

// Quantizer state (all amaxes, names) for training checkpoints; load restores hooks+amaxes onto a model.
// Names: "<module>.input_quantizer._amax", "<module>.weight_quantizer._amax" (float32 scalars, CPU), with static
// block scales "<module>.weight_quantizer._block_scale" (uint8 E4M3 codes [out, in/16], the exported weight_scale),
// and with an FP8 KV cache "<layer>.self_attn.k_proj.k_scale", "<layer>.self_attn.v_proj.v_scale" (the scales themselves, as
// exported). The state decides which modules are quantized and whether the KV cache is: every attention layer
// has both scales or none has.
std::vector<std::pair<std::string, torch::Tensor>> quantizer_state(const model::CausalLM& lm);
// The modules named in `state` get hooks (others lose theirs), with static block scales where the state has them;
// cfg gives ste and quantize_inputs.
void load_quantizer_state(model::CausalLM& lm, const std::vector<std::pair<std::string, torch::Tensor>>& state,
                          const QuantConfig& cfg);

// True when the model's attention layers carry FP8 KV-cache hooks (apply_nvfp4 with kv_cache fp8, a quantizer
// state or an export with k_scale / v_scale).
bool has_fp8_kv_cache(const model::CausalLM& lm);
// Removes the FP8 KV-cache hooks (the KV cache then stays in the model's dtype).
void remove_kv_cache_quant(model::CausalLM& lm);

// Names of the Linears that carry an NVFP4 hook / that do not (these go to exclude_modules on export).
std::vector<std::string> quantized_modules(const model::CausalLM& lm);
std::vector<std::string> unquantized_modules(const model::CausalLM& lm);

// Export in the ModelOpt unified HF layout, atomically (nothing complete-looking on failure), tokenizer files copied.
// The weight is quantized with the hook's stored (fixed, calibrated) weight amax and, when it has them, its static
// block scales as weight_scale, so the file decodes to exactly
// the weights the fake-quantized model computes with, also after training moved the weights. Returns the format
// written: W4A4 when the hooks quantize their inputs, weight-only W4A16 when none does, MIXED_PRECISION for a mix
// or FP8 layers (docs/quant.md, "Mixed precision: FP8 layers"). With
// FP8 KV-cache hooks the export also holds every layer's k_scale / v_scale and says kv_cache_quant_algo FP8.
NvFp4Format export_nvfp4(const model::CausalLM& lm, const std::filesystem::path& out_dir, const std::filesystem::path& source_dir /*config, tokenizer files*/);

// Import an NVFP4 checkpoint (ours or a ModelOpt export; MIXED_PRECISION with FP8 layers too): dequantized weights
// (exact), input fake quant with the stored input_scale,
// and with kv_cache_quant_algo FP8 the KV cache fake-quantized with the stored k_scale / v_scale of every layer.
// The hooks keep weight amax = weight_scale_2 * 2688 and the file's weight_scale as static block scales in their
// state (so a re-export writes the same bytes) but do not re-quantize the (already NVFP4) weights;
// enable_weight_fake_quant() switches that on to train from an imported checkpoint; use_dynamic_block_scales()
// drops the stored block scales.
model::CausalLM load_nvfp4(const std::filesystem::path& dir, torch::Device device, torch::ScalarType dtype);
bool is_nvfp4_checkpoint(const std::filesystem::path& dir);
// The format export_nvfp4 writes for the model's hooks (W4A4, W4A16, or MIXED_PRECISION).
NvFp4Format export_format(const model::CausalLM& lm);
void enable_weight_fake_quant(model::CausalLM& lm, bool on = true);
// Every weight quantizer goes back to dynamic block scales (the static ones are dropped).
void use_dynamic_block_scales(model::CausalLM& lm);
// True when some weight quantizer has static block scales.
bool has_static_block_scales(const model::CausalLM& lm);

}  // namespace qad::quant

namespace qad::nvfp4 {  // found by argument-dependent lookup from the settings list
void to_json(nlohmann::json& j, StraightThrough s);
void from_json(const nlohmann::json& j, StraightThrough& s);
}  // namespace qad::nvfp4
